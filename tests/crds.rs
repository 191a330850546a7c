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

#[test]
fn printer_columns_never_show_invalid_or_blank() {
    let crds = crds();
    let find = |kind: &str| crds.iter().find(|c| c.spec.names.kind == kind).unwrap().spec.versions[0].clone();
    let sk = find("SigningKey");
    let next = sk.additional_printer_columns.unwrap().into_iter().find(|c| c.name == "Next").unwrap();
    // kubectl prints a future time in a `date` column as <invalid>.
    assert_eq!(next.type_, "string");
    let ap = find("AuthPolicy");
    let schema = serde_json::to_value(ap.schema.unwrap().open_api_v3_schema.unwrap()).unwrap();
    // Defaulted by the API server, so the GATEWAY column shows it.
    assert_eq!(schema["properties"]["spec"]["properties"]["gateway"]["default"], "default");
}
