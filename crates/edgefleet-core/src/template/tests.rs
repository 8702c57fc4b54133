use edgefleet_wire::Labels;
use edgefleet_wire::node::NodeFacts;
use edgefleet_wire::workload::{FileSpec, OnFileChange};
use proptest::prelude::*;
use serde_json::{Value, json};

use super::*;

fn facts() -> Value {
    json!({"arch": "aarch64", "os": {"name": "Debian", "version": "12"}, "cpu": {"count": 4},
           "interfaces": [{"name": "eth0"}], "timezone": null})
}

fn render(src: &str, labels: &[(&str, &str)]) -> Result<String, TemplateError> {
    let labels: Labels = labels
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
    let facts = facts();
    Template::parse(src)?.render(&Context {
        node: "edge-7",
        labels: &labels,
        facts: &facts,
        workload: "web",
    })
}

#[test]
fn renders_variables_defaults_and_literals() {
    assert_eq!(
        render(
            "name={{ node.name }} site={{node.labels.site}} arch={{ node.facts.arch }}\n",
            &[("site", "berlin")]
        )
        .unwrap(),
        "name=edge-7 site=berlin arch=aarch64\n"
    );
    assert_eq!(
        render(
            "{{ node.labels.zone | default \"lab\" }}/{{ workload.name }}",
            &[]
        )
        .unwrap(),
        "lab/web"
    );
    assert_eq!(
        render(
            "{{ node.labels.zone | default \"lab\" }}",
            &[("zone", "z1")]
        )
        .unwrap(),
        "z1"
    );
    assert_eq!(render("{{ \"{{\" }} x }}", &[]).unwrap(), "{{ x }}");
    assert_eq!(
        render("{{ node.facts.os.name }} {{ node.facts.cpu.count }} {{ node.facts.interfaces.0.name }}", &[]).unwrap(),
        "Debian 4 eth0"
    );
    assert_eq!(
        render(
            "{{ node.labels.example.com/zone }}",
            &[("example.com/zone", "a")]
        )
        .unwrap(),
        "a"
    );
    assert_eq!(
        render("no expressions } {", &[]).unwrap(),
        "no expressions } {"
    );
}

#[test]
fn render_errors_name_the_variable_and_position() {
    let err = render("a\nb {{ node.labels.site }}", &[]).unwrap_err();
    assert_eq!((err.line, err.column), (2, 3));
    assert!(err.message.contains("no label \"site\""), "{err}");
    let err = render("{{ node.facts.timezone }}", &[]).unwrap_err();
    assert!(err.message.contains("does not know"), "{err}");
    let err = render("{{ node.facts.os }}", &[]).unwrap_err();
    assert!(err.message.contains("not one value"), "{err}");
}

#[test]
fn syntax_errors_are_located() {
    for (src, line, column, needle) in [
        ("x {{ node.name", 1, 3, "without a closing"),
        ("\n  {{ }}", 2, 3, "empty"),
        ("{{ node.name | upper }}", 1, 1, "unknown filter"),
        ("{{ node.name | default lab }}", 1, 1, "double quotes"),
        ("{{ \"abc }}", 1, 1, "without a closing"),
        ("{{ node..name }}", 1, 1, "empty name part"),
        ("{{ a b }}", 1, 1, "invalid variable"),
    ] {
        let err = Template::parse(src).unwrap_err();
        assert_eq!((err.line, err.column), (line, column), "{src}: {err}");
        assert!(err.message.contains(needle), "{src}: {err}");
    }
}

#[test]
fn variables_are_checked_against_what_nodes_have() {
    let shape = serde_json::to_value(NodeFacts::default()).unwrap();
    let ok = |src: &str| Template::parse(src).unwrap().check_variables(&shape);
    assert!(ok("{{ node.name }}{{ workload.name }}{{ node.labels.site }}").is_ok());
    assert!(
        ok("{{ node.facts.arch }}{{ node.facts.os.name }}{{ node.facts.interfaces.0.name }}")
            .is_ok()
    );
    assert!(
        ok("{{ node.facts.nope }}")
            .unwrap_err()
            .message
            .contains("unknown fact")
    );
    assert!(
        ok("{{ node.ip }}")
            .unwrap_err()
            .message
            .contains("unknown variable")
    );
    assert!(Template::parse("{{ node.labels.Bad Key }}").is_err());
    assert!(ok("{{ node.labels.-bad }}").is_err());
}

fn file(path: &str, content: &str) -> FileSpec {
    FileSpec {
        path: path.into(),
        content: content.into(),
        mode: None,
        on_change: OnFileChange::Restart,
    }
}

#[test]
fn file_paths_and_modes_are_checked() {
    let shape = serde_json::to_value(NodeFacts::default()).unwrap();
    for bad in ["", "/etc/x", "../x", "a/../b", "a//b", "./a"] {
        let err = check_files(&[file(bad, "")], &shape).unwrap_err();
        assert_eq!(err.1.field, "path", "{bad}");
    }
    let err = check_files(&[file("a.conf", ""), file("a.conf", "")], &shape).unwrap_err();
    assert_eq!(err.0, 1);
    assert!(err.1.message.contains("duplicate"));
    let err = check_files(&[file("a", ""), file("a/b", "")], &shape).unwrap_err();
    assert!(err.1.message.contains("cannot both be files"), "{}", err.1);
    let mut f = file("x", "");
    for (mode, want) in [
        (None, Some(0o644)),
        (Some("0600"), Some(0o600)),
        (Some("0o755"), Some(0o755)),
        (Some("999"), None),
        (Some("rw"), None),
        (Some(""), None),
    ] {
        f.mode = mode.map(str::to_owned);
        assert_eq!(file_mode(&f).ok(), want, "{mode:?}");
    }
    let err = check_files(&[file("ok", "{{ node.bogus }}")], &shape).unwrap_err();
    assert_eq!(err.1.field, "content");
    assert!(
        check_files(
            &[file("conf/app.toml", "site = \"{{ node.labels.site }}\"")],
            &shape
        )
        .is_ok()
    );
}

proptest! {
    // Text without `{{` renders to itself; parsing never panics on any input.
    #[test]
    fn plain_text_is_itself(text in "[^{]*") {
        prop_assert_eq!(render(&text, &[]).unwrap(), text);
    }

    #[test]
    fn parse_never_panics(src in ".{0,64}") {
        let _ = Template::parse(&src);
    }
}
