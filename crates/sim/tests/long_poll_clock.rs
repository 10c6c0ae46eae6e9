//! A held long-poll ends at its deadline on the host's wall clock, which
//! can be stepped (NTP, an operator, a VM resumed from a snapshot). A step
//! forward ends the wait early, which is harmless; a step back must not
//! hold the request for as long as the step (it could be hours): a step
//! larger than the time already waited ends the wait, a smaller one
//! lengthens it by at most the step.

use edgesync_core::{Config, Handled, Parked};
use edgesync_sim::direct::{block_on, Api};
use edgesync_sim::store::{MemStore, StrictKv};

const NOW: u64 = 1_800_000_000_000;

fn park<K: edgesync_core::Kv>(api: &Api<K>) -> Parked {
    let request = api.request("GET", "/v1/changes?since=0&wait=20", None);
    match block_on(api.service.start(request)) {
        Handled::Parked(parked) => parked,
        Handled::Done(response) => panic!("answered at once: {}", response.status()),
    }
}

/// The status of the answer to `parked` if it has one now.
fn check<K: edgesync_core::Kv>(api: &Api<K>, parked: &Parked) -> Option<u16> {
    block_on(api.service.resume(parked)).map(|r| r.status().as_u16())
}

#[test]
fn a_clock_stepped_back_past_the_start_of_a_wait_ends_it() {
    let api = Api::new(
        Config::with_secret(Vec::new()),
        StrictKv::new(MemStore::new()),
        NOW,
        "clock",
    );
    let parked = park(&api);
    assert_eq!(parked.deadline_millis(), NOW + 20_000);
    let clock = api.service.host();

    assert_eq!(check(&api, &parked), None, "nothing new, time left");
    clock.set_now(NOW + 5_000);
    assert_eq!(check(&api, &parked), None);
    // Back by less than the time waited: the wait goes on (longer by 2 s).
    clock.set_now(NOW + 3_000);
    assert_eq!(check(&api, &parked), None);
    // Back by an hour: waiting for the deadline would take an hour and
    // twenty seconds more.
    clock.set_now(NOW - 3_600_000);
    assert_eq!(check(&api, &parked), Some(200), "the wait ends now");

    // The deadline itself still ends a wait.
    clock.set_now(NOW);
    let parked = park(&api);
    clock.set_now(NOW + 19_999);
    assert_eq!(check(&api, &parked), None);
    clock.set_now(NOW + 20_000);
    assert_eq!(check(&api, &parked), Some(200));
}
