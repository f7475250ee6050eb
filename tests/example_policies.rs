//! The sample policies in examples/policies/ are valid: they parse into the
//! API types and pass the operator's own validation.

use peregrine::crd::{ClusterRemediationPolicy, RemediationPolicy};
use peregrine::policy::validation;

#[test]
fn every_sample_policy_is_valid() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/policies");
    let mut kinds = Vec::new();
    for entry in std::fs::read_dir(dir).expect("examples/policies") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let text = std::fs::read_to_string(&path).unwrap();
        let value: serde_json::Value =
            serde_saphyr::from_str(&text).unwrap_or_else(|e| panic!("{name}: {e}"));
        let kind = value["kind"].as_str().unwrap_or_default().to_string();
        match kind.as_str() {
            "RemediationPolicy" => {
                let p: RemediationPolicy =
                    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
                validation::validate_namespaced(&p.spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            "ClusterRemediationPolicy" => {
                let p: ClusterRemediationPolicy =
                    serde_json::from_value(value).unwrap_or_else(|e| panic!("{name}: {e}"));
                validation::validate_cluster(&p.spec).unwrap_or_else(|e| panic!("{name}: {e}"));
            }
            other => panic!("{name}: unexpected kind {other:?}"),
        }
        kinds.push(kind);
    }
    assert!(kinds.len() >= 4, "{kinds:?}");
    assert!(kinds.iter().any(|k| k == "ClusterRemediationPolicy"));
}
