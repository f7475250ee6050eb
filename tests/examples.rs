//! The sample alerts of `make demo` are real-shaped alerts the intake accepts.

use peregrine::falco;

#[test]
fn every_sample_alert_parses_and_says_where_it_happened() {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/examples/alerts");
    let mut seen = 0;
    for entry in std::fs::read_dir(dir).expect("examples/alerts") {
        let path = entry.expect("entry").path();
        let name = path.file_name().unwrap().to_string_lossy().to_string();
        let alert =
            falco::parse(&std::fs::read(&path).unwrap()).unwrap_or_else(|e| panic!("{name}: {e}"));
        let subject = falco::subject_of(&alert);
        let host_level =
            name.contains("on-host") || name.contains("cloudtrail") || name.contains("internal");
        assert_eq!(
            subject.namespace.is_none(),
            host_level,
            "{name}: {subject:?}"
        );
        assert!(!alert.output.is_empty(), "{name}");
        seen += 1;
    }
    assert!(seen >= 8, "{seen} samples");
}
