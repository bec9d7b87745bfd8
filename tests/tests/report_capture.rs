//! End-to-end provider intelligence: official SDK clients captured against the fake provider,
//! then `llmsim-agent report --json` must show exactly the token counts the provider reported for
//! every call, priced; the snapshot must pass `verify`; `export --har` must list every exchange
//! and `report --html` must write the page.

use std::{path::Path, process::Command, time::Duration};

use llmsim_tests::{
    CommandOutput, FakeProvider, TestCa, TestNetns, configure_client_env, llmsim_agent,
    netns_client_argv, privileged, run_command,
};
use serde_json::Value;

const TIMEOUT: Duration = Duration::from_secs(180);

fn agent(args: &[&str], dir: &Path, what: &str) -> CommandOutput {
    let mut cmd = Command::new(llmsim_agent());
    cmd.args(args).arg(dir);
    let output = run_command(cmd, what, TIMEOUT);
    output.assert_success();
    output
}

/// Captures `client` under the providers' real host names, then checks the report against what
/// the fake provider says it counted.
fn report_matches_provider_usage(client: &str, provider_name: &str) {
    let ca = TestCa::new();
    let netns = TestNetns::new();
    let provider = FakeProvider::start(&netns, &ca);
    let out = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(llmsim_agent());
    cmd.arg("capture")
        .arg("--out")
        .arg(out.path())
        .arg("--")
        .args(netns_client_argv(&netns, client));
    configure_client_env(&mut cmd, &ca);
    run_command(cmd, &format!("capture of {client}"), TIMEOUT).assert_success();

    let served = provider.requests();
    let report = agent(&["report", "--json"], out.path(), "report --json").json();
    let calls = report["calls"].as_array().expect("calls");
    assert_eq!(
        calls.len(),
        served.len(),
        "one call per request served:\n{report:#}"
    );
    let (mut input, mut output, mut cost) = (0, 0, 0.0);
    for (call, request) in calls.iter().zip(&served) {
        let usage = request
            .usage
            .as_ref()
            .unwrap_or_else(|| panic!("the provider logged no usage for {}", request.path));
        let at = format!("call {} ({} {})", call["seq"], request.path, request.stream);
        assert_eq!(call["provider"], provider_name, "{at}");
        assert_eq!(call["usage"]["input_tokens"], usage.input_tokens, "{at}");
        assert_eq!(call["usage"]["output_tokens"], usage.output_tokens, "{at}");
        assert_eq!(call["streamed"], request.stream, "{at}");
        let call_cost = call["cost_usd"]
            .as_f64()
            .unwrap_or_else(|| panic!("{at}: unpriced"));
        assert!(call_cost > 0.0, "{at}: cost {call_cost}");
        assert!(
            call["ttft_ms"].as_f64().is_some_and(|t| t > 0.0),
            "{at}: no time to first token"
        );
        input += usage.input_tokens;
        output += usage.output_tokens;
        cost += call_cost;
    }
    let total = &report["total"];
    assert_eq!(total["usage"]["input_tokens"], input);
    assert_eq!(total["usage"]["output_tokens"], output);
    assert!(
        (total["cost_usd"].as_f64().unwrap() - cost).abs() < 1e-12,
        "{total:#}"
    );
    assert_eq!(total["unpriced"], 0);

    let table = agent(&["report"], out.path(), "report").stdout;
    assert!(
        table.contains(provider_name) && table.contains("total"),
        "{table}"
    );

    let verify = agent(&["verify"], out.path(), "verify");
    assert!(verify.stdout.contains("no problems"), "{verify}");

    let har = out.path().join("capture.har");
    let har_arg = har.to_str().expect("UTF-8 path");
    agent(&["export", "--har", har_arg], out.path(), "export --har");
    let har: Value = serde_json::from_str(&std::fs::read_to_string(&har).expect("HAR file"))
        .expect("HAR is JSON");
    assert_eq!(har["log"]["version"], "1.2");
    assert_eq!(
        har["log"]["entries"].as_array().map(Vec::len),
        Some(served.len())
    );

    let html = out.path().join("report.html");
    agent(
        &["report", "--html", html.to_str().expect("UTF-8 path")],
        out.path(),
        "report --html",
    );
    let page = std::fs::read_to_string(&html).expect("HTML page");
    assert_eq!(page.matches("<g class=\"call\">").count(), served.len());
}

#[test]
fn report_of_anthropic_python_matches_the_provider() {
    if privileged("report of a captured anthropic-python run") {
        report_matches_provider_usage("anthropic_messages.py", "anthropic");
    }
}

#[test]
fn report_of_openai_python_matches_the_provider() {
    if privileged("report of a captured openai-python run") {
        report_matches_provider_usage("openai_chat.py", "openai");
    }
}
