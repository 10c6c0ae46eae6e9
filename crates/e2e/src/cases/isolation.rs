//! Cross-user isolation: a user can never read, write or infer another
//! user's data, whatever the `sub` contains.

use serde_json::{json, Value};

use super::*;
use crate::Target;

/// Subs crafted to collide with a user's keys under naive key building
/// (`user/docs/...`, `user/log/n`, prefixes, escapes), plus odd ones.
pub fn hostile_subs(base: &str) -> Vec<String> {
    let mut v = vec![
        format!("{base}/docs/c/x"),
        format!("{base}/log/1"),
        format!("{base}/head"),
        format!("{base}/"),
        format!("{base}%2F"),
        format!("{base}:docs"),
        format!("{base}\u{0}"),
        format!("{base}x"),
        base[..base.len() - 1].to_string(),
        format!("../{base}"),
        format!("{base}/.."),
        format!("{}", base.to_uppercase()),
    ];
    let seed = random_name(6);
    v.extend([
        format!("a/log/1-{seed}"),
        format!("../x-{seed}"),
        format!("u/%2F-{seed}"),
        format!("u%2F-{seed}"),
        format!("u/-{seed}"),
        format!("用户😀-{seed}"),
        format!("a b\t\n-{seed}"),
        format!("'; DROP TABLE docs; -- {seed}"),
        format!("*-{seed}"),
        format!("\\-{seed}"),
        format!("{{{seed}}}"),
    ]);
    // 256 bytes exactly: ASCII, and multibyte.
    let mut ascii = format!("long-{seed}-");
    while ascii.len() < 256 {
        ascii.push('z');
    }
    v.push(ascii);
    let mut multi = format!("é{seed}");
    while multi.len() + 2 <= 256 {
        multi.push('é');
    }
    while multi.len() < 256 {
        multi.push('z');
    }
    v.push(multi);
    v
}

/// A's documents, changes, head and listing are invisible to B for every
/// hostile B; B's writes to the same path are B's own and leave A alone.
pub async fn users_cannot_see_each_other(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let a = t.new_user();
    let c = "c";
    let va = put_ok(&api, &a, c, "x", &json!({"owner": "a"})).await?;
    put_ok(&api, &a, c, "y", &json!({"owner": "a"})).await?;
    for sub in hostile_subs(&a.sub) {
        let b = t.user(&sub);
        let label = format!("user {sub:?} vs user {:?}", a.sub);
        let r = api.get(doc_path(c, "x")).auth(&b).send().await?;
        assert_eq!(
            r.status,
            404,
            "{label}: B must not read A's document: {}",
            r.text()
        );
        let r = api.get("/v1/docs").auth(&b).send().await?.expect(200);
        assert_eq!(
            r.json()["documents"],
            json!([]),
            "{label}: B's listing must be empty"
        );
        assert_eq!(r.json()["cursor"], json!(0), "{label}: B's listing cursor");
        let r = api
            .get("/v1/changes?since=0")
            .auth(&b)
            .send()
            .await?
            .expect(200);
        assert_eq!(
            r.json(),
            json!({"changes": [], "next": 0, "head": 0}),
            "{label}: B's changes"
        );
        assert_eq!(head(&api, &b).await?, 0, "{label}: B's head");
        // Probing with preconditions reveals nothing either.
        let r = api
            .put(doc_path(c, "x"))
            .auth(&b)
            .header("If-Match", etag(va))
            .json(&json!("probe"))
            .send()
            .await?;
        let p = r.expect_problem(412, "precondition-failed");
        assert_eq!(
            p["current_version"],
            Value::Null,
            "{label}: B's 412 must not reveal A's version"
        );
        let r = api
            .patch(doc_path(c, "x"))
            .auth(&b)
            .merge_patch(&json!({}))
            .send()
            .await?;
        r.expect_problem(404, "document-not-found");
        let r = api.delete(doc_path(c, "y")).auth(&b).send().await?;
        r.expect_problem(404, "document-not-found");
        let r = api.get("/v1/changes?since=1").auth(&b).send().await?;
        r.expect_problem(409, "cursor-ahead");
    }
    // A is untouched.
    assert_eq!(head(&api, &a).await?, 2, "A's head after all the probes");
    let g = api.get(doc_path(c, "x")).auth(&a).send().await?.expect(200);
    assert_document(&g.json(), c, "x", va, &json!({"owner": "a"}));
    Ok(())
}

/// Every hostile sub (key-path look-alikes, `..`, escapes, unicode,
/// 256 bytes) is an ordinary, separate user: each writes the same path and
/// reads back only its own value, head 1, one change.
pub async fn hostile_subs_are_just_names(t: &Target) -> anyhow::Result<()> {
    let api = t.api();
    let base = t.new_user();
    let mut subs = hostile_subs(&base.sub);
    subs.push(base.sub.clone());
    let users: Vec<User> = subs.iter().map(|s| t.user(s)).collect();
    for (i, u) in users.iter().enumerate() {
        let r = put(&api, u, "c", "x", &json!({"sub": u.sub, "i": i})).await?;
        if r.status != 201 {
            panic!(
                "user {:?}: first PUT must be 201, got {} {}",
                u.sub,
                r.status,
                r.text()
            );
        }
    }
    for (i, u) in users.iter().enumerate() {
        let label = format!("user {:?}", u.sub);
        let g = api
            .get(doc_path("c", "x"))
            .auth(u)
            .send()
            .await?
            .expect(200);
        assert_document(&g.json(), "c", "x", 1, &json!({"sub": u.sub, "i": i}));
        assert_eq!(
            head(&api, u).await?,
            1,
            "{label}: exactly one mutation of its own"
        );
        let ch = all_changes(&api, u, 0).await?;
        assert_eq!(ch.len(), 1, "{label}: one change of its own: {ch:?}");
        let r = api.get("/v1/docs").auth(u).send().await?.expect(200);
        assert_eq!(
            r.json()["documents"].as_array().unwrap().len(),
            1,
            "{label}: one document listed"
        );
    }
    Ok(())
}
