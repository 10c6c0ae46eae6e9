//! wit-bindgen bindings for `wit/world.wit` (`edgesync:spin/kv-imports`).

wit_bindgen::generate!({
    world: "edgesync:spin/kv-imports",
    path: "../../wit",
    // The world's only dependency is wasi:keyvalue, which is exactly what we
    // want bindings for.
    generate_all,
});
