//! Decoders that face users and the network never panic, whatever they are given.

use proptest::prelude::*;

const MANIFEST: &str = "apiVersion: edgefleet.io/v1\nkind: Deployment\nmetadata:\n  name: web\nspec:\n  selector:\n    matchExpressions:\n      - {key: site, operator: In, values: [a, b]}\n  workloads:\n    - name: w\n      command: /bin/true\n      stopGracePeriod: 5s\n";

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn manifest_parse_never_panics(text in "\\PC{0,300}") {
        let _ = edgefleet_core::manifest::parse("fuzz.yaml", &text);
    }

    /// Mutations of a valid manifest: cut it, or splice random text into it.
    #[test]
    fn mutated_manifests_never_panic(cut in 0usize..MANIFEST.len(), insert in "\\PC{0,20}") {
        let mut text = MANIFEST[..cut].to_owned();
        text.push_str(&insert);
        text.push_str(&MANIFEST[cut..]);
        if let Err(error) = edgefleet_core::manifest::parse("m.yaml", &text) {
            // Every error says where it comes from.
            prop_assert!(error.to_string().starts_with("m.yaml"));
        }
    }

    #[test]
    fn selector_parse_never_panics(text in "[a-z=!(), ]{0,40}|\\PC{0,40}") {
        if let Ok(selector) = edgefleet_core::selector::parse(&text) {
            // What parses renders to something that parses to the same selector.
            let again = edgefleet_core::selector::parse(&edgefleet_core::selector::to_string(&selector));
            prop_assert_eq!(again.ok(), Some(selector));
        }
    }

    #[test]
    fn join_decode_never_panics(text in "EFJ1\\.[A-Za-z0-9_-]{0,200}|\\PC{0,100}") {
        let _ = edgefleet_wire::JoinString::decode(&text);
    }

    #[test]
    fn durations_never_panic(text in "[0-9a-z]{0,30}") {
        if let Ok(duration) = text.parse::<edgefleet_wire::DurationSpec>() {
            prop_assert_eq!(duration.to_string().parse::<edgefleet_wire::DurationSpec>().ok(), Some(duration));
        }
    }

    #[test]
    fn label_parsers_never_panic(text in "\\PC{0,60}") {
        let _ = edgefleet_core::labels::parse_assignments(&text);
        let _ = edgefleet_core::labels::parse_edits(&[text.as_str()]);
    }
}
