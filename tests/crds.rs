//! The CRDs in `crds/` (and the Helm chart's copy) are exactly what the Rust types generate, and
//! the examples are valid against them.

use std::path::Path;

use portcullis::api::{crd_file_name, crd_yaml, crds};

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

#[test]
fn checked_in_crds_match_the_rust_types() {
    let mut stale = Vec::new();
    for crd in crds() {
        let want = crd_yaml(&crd).unwrap();
        let path = root().join("crds").join(crd_file_name(&crd));
        if std::fs::read_to_string(&path).ok().as_deref() != Some(want.as_str()) {
            stale.push(path.display().to_string());
        }
    }
    assert!(
        stale.is_empty(),
        "stale CRDs: {stale:?}; run `cargo run -- crds --out crds --out charts/portcullis/crds` and commit the result"
    );
}

#[test]
fn generated_crds_parse_back_as_crds() {
    for crd in crds() {
        let yaml = crd_yaml(&crd).unwrap();
        let back: k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition =
            serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, crd);
    }
}
