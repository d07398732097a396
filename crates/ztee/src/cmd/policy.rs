//! `ztee policy`: evaluate and test the Rego policy bundle (work done by `ztee-policy`).

use std::io::Read as _;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Args, Subcommand};
use ztee_policy::{run_tests, Bundle, PolicyEngine, PolicyInput, TestStatus};

use crate::globals::GlobalArgs;
use crate::output::{print_list, print_object};

#[derive(Subcommand)]
pub enum Command {
    /// Show the decision the policy makes for one input.
    ///
    /// Examples:
    ///   ztee policy eval --input request.json
    ///   ztee policy eval --input - --bundle ./policies --format json < request.json
    ///
    /// The input is a JSON object with `principal` {subject, tenant, roles, tier}, `action`
    /// (sandbox.create, sandbox.exec, sandbox.delete, run, file.write, file.read, llm.chat,
    /// tool.call, image.admit, egress, secret.use), `request`, `dlp` and `injection`; see
    /// docs/policy.md. The default bundle denies any other action (policy.no_allow_rule).
    /// Exit status 0 whatever the verdict; non-zero only on an error.
    #[command(verbatim_doc_comment)]
    Eval(EvalArgs),
    /// Run the bundle's unit tests (rules named `test_*`) and print pass/fail per test.
    ///
    /// Examples:
    ///   ztee policy test policies/
    ///   ztee policy test            # the installed bundle, or the built-in one
    ///
    /// Exit status: 0 when every test passes, 1 otherwise.
    #[command(verbatim_doc_comment)]
    Test(TestArgs),
}

#[derive(Args)]
pub struct EvalArgs {
    /// JSON input file, or `-` for stdin.
    #[arg(long)]
    input: PathBuf,
    /// Policy bundle directory [default: <data-dir>/policies, else the built-in bundle].
    #[arg(long)]
    bundle: Option<PathBuf>,
}

#[derive(Args)]
pub struct TestArgs {
    /// Policy bundle directory [default: <data-dir>/policies, else the built-in bundle].
    dir: Option<PathBuf>,
}

pub fn run(command: Command, globals: &GlobalArgs) -> anyhow::Result<u8> {
    match command {
        Command::Eval(args) => eval(args, globals),
        Command::Test(args) => test(args, globals),
    }
}

fn eval(args: EvalArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let text = if args.input.as_os_str() == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .context("reading the input from stdin")?;
        text
    } else {
        std::fs::read_to_string(&args.input)
            .with_context(|| format!("{}: cannot read the input", args.input.display()))?
    };
    let input: PolicyInput = serde_json::from_str(&text)
        .map_err(|e| anyhow::anyhow!("{}: not a valid policy input: {e}", args.input.display()))?;
    let bundle = Bundle::resolve(args.bundle.as_deref(), &globals.data_dir)?;
    let engine = PolicyEngine::compile(&bundle)?;
    let decision = engine.evaluate(&input);
    let mut fields = vec![
        ("verdict", decision.verdict.to_string()),
        ("risk", decision.risk.to_string()),
        ("bundle", engine.bundle().to_string()),
    ];
    for reason in &decision.reasons {
        fields.push(("reason", format!("{}: {}", reason.rule, reason.message)));
    }
    print_object(globals.format, &decision, &fields)?;
    Ok(0)
}

fn test(args: TestArgs, globals: &GlobalArgs) -> anyhow::Result<u8> {
    let bundle = Bundle::resolve(args.dir.as_deref(), &globals.data_dir)?;
    let results = run_tests(&bundle)?;
    if results.is_empty() {
        anyhow::bail!("{}: no test_ rules found", bundle.describe());
    }
    print_list(
        globals.format,
        &["RESULT", "TEST", "FILE", "TIME"],
        &results,
        |r| {
            let result = match &r.status {
                TestStatus::Pass => "PASS".to_string(),
                TestStatus::Fail => "FAIL".to_string(),
                TestStatus::Error { reason } => {
                    format!("ERROR: {}", reason.trim().replace('\n', " "))
                }
            };
            vec![
                result,
                r.name.clone(),
                r.file.clone(),
                format!("{:.1} ms", r.duration.as_secs_f64() * 1000.0),
            ]
        },
    )?;
    let passed = results
        .iter()
        .filter(|r| r.status == TestStatus::Pass)
        .count();
    let failed = results.len() - passed;
    eprintln!("{passed} passed, {failed} failed");
    Ok(if failed == 0 { 0 } else { 1 })
}
