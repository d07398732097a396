//! The two programs the code contexts and filesystem actions run inside a sandbox, `src/action/guest/interpreter.py`
//! (a persistent code-execution context) and `src/action/guest/fs.py` (filesystem operations),
//! driven as the host drives them: started as child processes, requests written to stdin one
//! per line, JSON lines read back from stdout. They run on the host's python3, in a venv with
//! numpy, pandas and matplotlib as a data-science image has them; no VM is needed.
//!
//! Every read is bounded by [`LINE_TIMEOUT`] and every child is killed when its test ends, so a
//! misbehaving program fails its test instead of hanging it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde_json::{json, Value};

/// The longest wait for one line: room for a first matplotlib import (it builds a font cache),
/// finite so that no test can hang.
const LINE_TIMEOUT: Duration = Duration::from_secs(120);

fn manifest_dir() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// python3 with the packages of `tests/e2b_guest/requirements.txt`.
fn python() -> PathBuf {
    common::venv::python(&manifest_dir().join("tests/e2b_guest/requirements.txt"))
}

/// One guest program as the host runs it: `python -u SCRIPT`, requests on its stdin, JSON lines
/// from its stdout (read by a thread into a channel, so each read can have a deadline). Its
/// stderr is the test's: whatever a program prints there before it takes over fd 2 shows up
/// with a failure.
struct Guest {
    child: Child,
    stdin: Option<ChildStdin>,
    lines: Receiver<String>,
    /// The pipes of its stdin and stdout as /proc names them (`pipe:[inode]`).
    pipes: [String; 2],
}

impl Guest {
    fn start(script: &str, cwd: &Path, env: &[(&str, &str)]) -> Guest {
        let mut command = Command::new(python());
        command
            .arg("-u")
            .arg(manifest_dir().join("src/action/guest").join(script));
        Guest::spawn(command, cwd, env)
    }

    fn spawn(mut command: Command, cwd: &Path, env: &[(&str, &str)]) -> Guest {
        let mut child = command
            .current_dir(cwd)
            .envs(env.iter().copied())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let stdin = child.stdin.take().unwrap();
        let stdout = child.stdout.take().unwrap();
        let pipe = |fd: i32| -> String {
            let link = std::fs::read_link(format!("/proc/self/fd/{fd}")).unwrap();
            link.to_str().unwrap().to_owned()
        };
        let pipes = [pipe(stdin.as_raw_fd()), pipe(stdout.as_raw_fd())];
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Guest {
            child,
            stdin: Some(stdin),
            lines,
            pipes,
        }
    }

    fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin is open");
        stdin.write_all(format!("{line}\n").as_bytes()).unwrap();
        stdin.flush().unwrap();
    }

    /// The next line, which must be one JSON value.
    fn next(&self) -> Value {
        let line = match self.lines.recv_timeout(LINE_TIMEOUT) {
            Ok(line) => line,
            Err(RecvTimeoutError::Timeout) => panic!("no line within {LINE_TIMEOUT:?}"),
            Err(RecvTimeoutError::Disconnected) => panic!("the program closed its stdout"),
        };
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("not a JSON line ({e}): {line:?}"))
    }

    /// Closes stdin, as the host does to end the program; returns how it exited.
    fn close(&mut self) -> ExitStatus {
        drop(self.stdin.take());
        let deadline = Instant::now() + LINE_TIMEOUT;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "still running {LINE_TIMEOUT:?} after EOF"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Sends SIGINT, as the host does to interrupt a cell.
    fn interrupt(&self) {
        let sent = Command::new(python())
            .args([
                "-c",
                "import os, signal, sys; os.kill(int(sys.argv[1]), signal.SIGINT)",
            ])
            .arg(self.child.id().to_string())
            .status()
            .unwrap();
        assert!(sent.success());
    }
}

impl Drop for Guest {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

// ---- interpreter.py ----

/// An interpreter in a working directory of its own.
struct Interpreter {
    guest: Guest,
    cwd: tempfile::TempDir,
}

impl Interpreter {
    fn start() -> Interpreter {
        let cwd = tempfile::tempdir().unwrap();
        let guest = Guest::start("interpreter.py", cwd.path(), &[]);
        assert_eq!(guest.next(), json!({"type": "ready"}));
        Interpreter { guest, cwd }
    }

    /// The JavaScript context, as the host starts it: `node -e <program>`.
    fn start_javascript() -> Interpreter {
        let cwd = tempfile::tempdir().unwrap();
        let program =
            std::fs::read_to_string(manifest_dir().join("src/action/guest/interpreter.js"))
                .unwrap();
        let mut command = Command::new("node");
        command.arg("-e").arg(program).arg("--");
        let guest = Guest::spawn(command, cwd.path(), &[]);
        assert_eq!(guest.next(), json!({"type": "ready"}));
        Interpreter { guest, cwd }
    }

    /// Runs `code`; returns the request's events, end_of_execution included.
    fn run(&mut self, code: &str) -> Vec<Value> {
        self.request(&json!({ "code": code }).to_string())
    }

    /// Sends one request line; returns the events up to end_of_execution, checked against the
    /// protocol's shapes and order.
    fn request(&mut self, line: &str) -> Vec<Value> {
        self.guest.send(line);
        let mut events = vec![];
        loop {
            let event = self.guest.next();
            let end = event["type"] == "end_of_execution";
            events.push(event);
            if end {
                break;
            }
        }
        check_protocol(&events);
        events
    }
}

/// The shapes and order every request's events must have: output first, then the execution
/// count (absent for an invalid request), results (at most one of them main), at most one
/// error, and the end.
fn check_protocol(events: &[Value]) {
    let mut stage = 0;
    for event in events {
        let object = event.as_object().unwrap();
        let kind = object["type"].as_str().unwrap();
        let this_stage = match kind {
            "stdout" | "stderr" => {
                assert!(
                    object["text"].as_str().is_some_and(|t| !t.is_empty()),
                    "{event}"
                );
                let timestamp = object["timestamp"].as_str().unwrap();
                assert!(
                    timestamp.len() == 27 && humantime::parse_rfc3339(timestamp).is_ok(),
                    "{event}"
                );
                assert_eq!(object.len(), 3, "{event}");
                0
            }
            "number_of_executions" => {
                assert!(object["execution_count"].as_u64().is_some(), "{event}");
                1
            }
            "result" => {
                assert!(object["text"].is_string(), "{event}");
                assert!(object["is_main_result"].is_boolean(), "{event}");
                2
            }
            "error" => {
                for field in ["name", "value", "traceback"] {
                    assert!(object[field].is_string(), "{event}");
                }
                3
            }
            "end_of_execution" => 4,
            other => panic!("unknown event type {other}: {event}"),
        };
        assert!(this_stage >= stage, "{kind} out of order in {events:#?}");
        assert!(
            this_stage == 0 || this_stage == 2 || this_stage != stage,
            "a second {kind} in {events:#?}"
        );
        stage = this_stage;
    }
    assert_eq!(stage, 4, "no end_of_execution in {events:#?}");
    let mains = events.iter().filter(|e| e["is_main_result"] == true);
    assert!(
        mains.count() <= 1,
        "more than one main result in {events:#?}"
    );
}

/// The concatenated text of the `kind` ("stdout" or "stderr") events.
fn output(events: &[Value], kind: &str) -> String {
    events
        .iter()
        .filter(|e| e["type"] == kind)
        .map(|e| e["text"].as_str().unwrap())
        .collect()
}

fn results(events: &[Value]) -> Vec<&Value> {
    events.iter().filter(|e| e["type"] == "result").collect()
}

fn main_result(events: &[Value]) -> Option<&Value> {
    results(events)
        .into_iter()
        .find(|r| r["is_main_result"] == true)
}

fn error(events: &[Value]) -> Option<&Value> {
    events.iter().find(|e| e["type"] == "error")
}

fn execution_count(events: &[Value]) -> Option<u64> {
    events
        .iter()
        .find(|e| e["type"] == "number_of_executions")
        .map(|e| e["execution_count"].as_u64().unwrap())
}

/// The text of the main result, failing on an error.
fn value(events: &[Value]) -> String {
    assert!(error(events).is_none(), "{events:#?}");
    main_result(events).expect("a main result")["text"]
        .as_str()
        .unwrap()
        .to_owned()
}

#[test]
fn state_persists_and_a_final_expression_is_the_main_result() {
    let mut py = Interpreter::start();
    let first = py.run("x = 41");
    assert_eq!(execution_count(&first), Some(1));
    assert!(results(&first).is_empty(), "{first:#?}");
    let second = py.run("x + 1");
    assert_eq!(execution_count(&second), Some(2));
    assert_eq!(results(&second).len(), 1);
    assert_eq!(value(&second), "42");
    py.run("import math\ndef area(r):\n    return math.pi * r * r");
    assert_eq!(value(&py.run("round(area(2), 3)")), "12.566");
    assert_eq!(value(&py.run("__name__")), "'__main__'");
    // Only a final expression counts; None is no result.
    assert!(results(&py.run("y = 1\ny + 1\nz = 3")).is_empty());
    assert!(results(&py.run("None")).is_empty());
    // Functions defined in cells pickle like those of a script's __main__.
    assert_eq!(
        value(&py.run("import pickle\npickle.loads(pickle.dumps(area))(1) == math.pi")),
        "True"
    );
    // The working directory is the one the host gave, and its modules are importable.
    std::fs::write(py.cwd.path().join("helper.py"), "ANSWER = 42\n").unwrap();
    assert_eq!(value(&py.run("import helper\nhelper.ANSWER")), "42");
}

#[test]
fn output_from_python_c_and_child_processes_comes_before_the_end() {
    let mut py = Interpreter::start();
    let events = py.run(
        "import os, subprocess, sys\n\
         print('from print')\n\
         sys.stdout.write('from sys.stdout\\n')\n\
         os.system('echo hi')\n\
         os.write(1, b'raw fd 1\\n')\n\
         subprocess.run(['sh', '-c', 'echo to stderr >&2'])\n\
         print('warning', file=sys.stderr)\n\
         print('no newline', end='')\n\
         'done'",
    );
    assert_eq!(
        output(&events, "stdout"),
        "from print\nfrom sys.stdout\nhi\nraw fd 1\nno newline"
    );
    assert_eq!(output(&events, "stderr"), "to stderr\nwarning\n");
    assert_eq!(value(&events), "'done'");

    // Large output comes in chunks of at most 64 KiB, all of it; bytes that are not UTF-8
    // become U+FFFD, and a character split across writes is whole.
    let events =
        py.run("print('x' * 200_000)\nos.write(1, b'\\xff\\xe2\\x82')\nos.write(1, b'\\xac')");
    let chunks: Vec<_> = events.iter().filter(|e| e["type"] == "stdout").collect();
    assert!(chunks.len() >= 4, "{} chunks", chunks.len());
    for chunk in chunks {
        assert!(chunk["text"].as_str().unwrap().len() <= 64 * 1024);
    }
    assert_eq!(
        output(&events, "stdout"),
        format!("{}\n\u{fffd}\u{20ac}", "x".repeat(200_000))
    );

    // The protocol's pipes are private: no fd that a child process could inherit leads to
    // them, while fd 1 is another pipe.
    let inheritable = py.run(
        "def inheritable(fd):\n\
         \x20   try:\n\
         \x20       return os.get_inheritable(fd)\n\
         \x20   except OSError:\n\
         \x20       return False\n\
         fds = [fd for fd in map(int, os.listdir('/proc/self/fd')) if inheritable(fd)]\n\
         {fd: os.readlink(f'/proc/self/fd/{fd}') for fd in fds}",
    );
    let inheritable = value(&inheritable);
    for pipe in &py.guest.pipes {
        assert!(
            !inheritable.contains(pipe.as_str()),
            "{pipe} in {inheritable}"
        );
    }
    assert!(inheritable.contains("1: 'pipe:["), "{inheritable}");
    // Stdin belongs to the protocol: input() sees EOF instead of the next request.
    let events = py.run("input()");
    assert_eq!(error(&events).unwrap()["name"], "EOFError");
    assert_eq!(value(&py.run("6 * 7")), "42");
}

#[test]
fn rich_reprs_and_display_are_results() {
    let mut py = Interpreter::start();
    let events = py.run(
        "class Rich:\n\
         \x20   def __repr__(self): return 'Rich()'\n\
         \x20   def _repr_html_(self): return '<b>rich</b>'\n\
         \x20   def _repr_markdown_(self): return '**rich**'\n\
         \x20   def _repr_png_(self): return b'\\x89PNG fake'\n\
         \x20   def _repr_json_(self): return {'rich': True}\n\
         \x20   def _repr_latex_(self): return None\n\
         display(1, 'two')\n\
         Rich()",
    );
    let all = results(&events);
    assert_eq!(all.len(), 3, "{events:#?}");
    assert_eq!(all[0]["text"], "1");
    assert_eq!(all[0]["is_main_result"], false);
    assert_eq!(all[1]["text"], "'two'");
    let rich = main_result(&events).unwrap();
    assert_eq!(
        *rich,
        json!({
            "type": "result", "text": "Rich()", "html": "<b>rich</b>", "markdown": "**rich**",
            "png": base64::engine::general_purpose::STANDARD.encode(b"\x89PNG fake"),
            "json": {"rich": true}, "is_main_result": true,
        })
    );
    // A class has the methods unbound: only its repr.
    let class = py.run("Rich");
    assert_eq!(
        *main_result(&class).unwrap(),
        json!({"type": "result", "text": "<class '__main__.Rich'>", "is_main_result": true})
    );
}

#[test]
fn a_dataframe_is_html_and_text() {
    let mut py = Interpreter::start();
    let events = py.run("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', 'y']})");
    let frame = main_result(&events).expect("a main result");
    let text = frame["text"].as_str().unwrap();
    assert!(text.contains('a') && text.contains('y'), "{text}");
    let html = frame["html"].as_str().expect("html");
    assert!(
        html.contains("<table") && html.contains("<td>y</td>"),
        "{html}"
    );
    assert_eq!(
        value(&py.run("import numpy as np\nnp.arange(3).sum()")),
        "np.int64(3)"
    );
}

#[test]
fn matplotlib_figures_are_png_results() {
    let mut py = Interpreter::start();
    // An open figure at the end of the cell is a result; plt.show() neither blocks nor warns.
    let events = py.run("import matplotlib.pyplot as plt\nplt.plot([1, 2, 3])\nplt.show()");
    assert_eq!(output(&events, "stderr"), "", "{events:#?}");
    let figures = results(&events);
    assert_eq!(figures.len(), 1, "{events:#?}");
    let figure = figures[0];
    assert_eq!(figure["text"], "<Figure size 640x480 with 1 Axes>");
    assert_eq!(figure["is_main_result"], false);
    assert_png(figure);
    // ... after which pyplot holds no figure; a cell without plots has no figure result.
    assert_eq!(value(&py.run("plt.get_fignums()")), "[]");

    // A figure as the final expression is one result, not a main result and not twice.
    let events = py.run("fig, ax = plt.subplots()\nax.bar(['a', 'b'], [3, 4])\nfig");
    let figures = results(&events);
    assert_eq!(figures.len(), 1, "{events:#?}");
    assert_eq!(figures[0]["is_main_result"], false);
    assert_png(figures[0]);
    // Without show() or a final figure, a plot still shows; the line list is the main result.
    let events = py.run("plt.plot([3, 1])");
    assert!(value(&events).starts_with("[<matplotlib.lines.Line2D"));
    assert_eq!(results(&events).len(), 2, "{events:#?}");
    assert_png(results(&events)[1]);
}

#[test]
fn matplotlib_figures_carry_their_data_as_e2b_charts() {
    let mut py = Interpreter::start();
    py.run("import matplotlib.pyplot as plt\nimport numpy as np\nimport datetime");
    let chart = |py: &mut Interpreter, code: &str| -> Value {
        let events = py.run(code);
        assert_eq!(error(&events), None, "{events:#?}");
        let figures = results(&events);
        assert_eq!(figures.len(), 1, "{events:#?}");
        assert_png(figures[0]);
        figures[0]["chart"].clone()
    };

    // A line chart: its points, title, axis labels and the units named in them, its ticks.
    let line = chart(
        &mut py,
        "plt.plot([1, 2, 3], [4, 5, 6.5], label='revenue')\nplt.plot([1, 3], [np.nan, 1])\n\
         plt.title('Sales')\nplt.xlabel('Time (s)')\nplt.ylabel('Price [USD]')\nplt.show()",
    );
    assert_eq!(line["type"], "line");
    assert_eq!(
        (
            &line["title"],
            &line["x_label"],
            &line["x_unit"],
            &line["y_unit"]
        ),
        (
            &json!("Sales"),
            &json!("Time (s)"),
            &json!("s"),
            &json!("USD")
        )
    );
    // NaN is not JSON: it is null. matplotlib's own placeholder labels ("_child1") are "".
    assert_eq!(
        line["elements"],
        json!([
            {"label": "revenue", "points": [[1, 4], [2, 5], [3, 6.5]]},
            {"label": "", "points": [[1, null], [3, 1]]},
        ])
    );
    assert_eq!(line["x_scale"], "linear");
    let ticks = line["x_ticks"].as_array().unwrap();
    let labels = line["x_tick_labels"].as_array().unwrap();
    assert_eq!(ticks.len(), labels.len());
    assert!(
        ticks
            .iter()
            .all(|t| (1.0..=3.0).contains(&t.as_f64().unwrap())),
        "{line}"
    );

    // Bars: each bar's category, value and series.
    let bars = chart(
        &mut py,
        "plt.bar(['Author A', 'Author B'], [100, 200], label='Books Sold')\n\
         plt.bar(['Author A', 'Author B'], [10, 20], bottom=[100, 200], label='E-books')\nplt.show()",
    );
    assert_eq!(bars["type"], "bar");
    assert_eq!(
        bars["elements"],
        json!([
            {"label": "Author A", "group": "Books Sold", "value": 100},
            {"label": "Author B", "group": "Books Sold", "value": 200},
            {"label": "Author A", "group": "E-books", "value": 10},
            {"label": "Author B", "group": "E-books", "value": 20},
        ])
    );

    // A pie: each wedge's label and angle.
    let pie = chart(
        &mut py,
        "plt.pie([1, 2, 3], labels=['a', 'b', 'c'])\nplt.show()",
    );
    assert_eq!(
        pie["elements"],
        json!([
            {"label": "a", "angle": 60, "radius": 1},
            {"label": "b", "angle": 120, "radius": 1},
            {"label": "c", "angle": 180, "radius": 1},
        ])
    );

    // Scatter, with dates on the x axis as ISO 8601.
    let scatter = chart(
        &mut py,
        "plt.scatter([datetime.date(2024, 1, 1), datetime.date(2024, 1, 3)], [1, 2], label='pts')\nplt.show()",
    );
    assert_eq!(scatter["type"], "scatter");
    assert_eq!(scatter["x_scale"], "datetime");
    assert_eq!(
        scatter["elements"][0]["points"],
        json!([
            ["2024-01-01T00:00:00+00:00", 1],
            ["2024-01-03T00:00:00+00:00", 2]
        ])
    );

    // Several axes: a superchart of their charts, titled by the figure.
    let both = chart(
        &mut py,
        "fig, (a, b) = plt.subplots(1, 2)\na.plot([1, 2])\nb.pie([1, 1])\nfig.suptitle('Both')\nplt.show()",
    );
    assert_eq!(both["type"], "superchart");
    assert_eq!(both["title"], "Both");
    let kinds: Vec<&Value> = both["elements"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| &c["type"])
        .collect();
    assert_eq!(kinds, [&json!("line"), &json!("pie")]);

    // A plot mixing kinds on one axes is "unknown"; an empty figure has no chart.
    let mixed = chart(&mut py, "plt.plot([1, 2])\nplt.bar([1], [1])\nplt.show()");
    assert_eq!(
        mixed,
        json!({"type": "unknown", "title": "", "elements": []})
    );
    let empty = chart(&mut py, "plt.figure()\nplt.show()");
    assert_eq!(empty, Value::Null);
}

fn assert_png(result: &Value) {
    let png = base64::engine::general_purpose::STANDARD
        .decode(result["png"].as_str().expect("png"))
        .unwrap();
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"), "not a PNG");
}

#[test]
fn errors_are_reported_and_the_context_keeps_serving() {
    let mut py = Interpreter::start();
    let events = py.run("print('before')\ndef divide(a, b):\n    return a / b\ndivide(1, 0)");
    assert_eq!(output(&events, "stdout"), "before\n");
    assert!(main_result(&events).is_none());
    let error = error(&events).unwrap();
    assert_eq!(error["name"], "ZeroDivisionError");
    assert_eq!(error["value"], "division by zero");
    let traceback = error["traceback"].as_str().unwrap();
    assert!(
        traceback.starts_with("Traceback (most recent call last):\n"),
        "{traceback}"
    );
    assert!(
        traceback.contains("line 4") && traceback.contains("divide(1, 0)"),
        "{traceback}"
    );
    assert!(traceback.contains("return a / b"), "{traceback}");
    assert!(
        traceback.ends_with("ZeroDivisionError: division by zero"),
        "{traceback}"
    );
    assert!(!traceback.contains("interpreter.py"), "{traceback}");

    let events = py.run("def broken(:\n    pass");
    assert_eq!(execution_count(&events), Some(2));
    let syntax = expect_error(&events);
    assert_eq!(syntax["name"], "SyntaxError");
    assert!(syntax["traceback"]
        .as_str()
        .unwrap()
        .contains("def broken(:"));

    for code in ["import sys\nsys.exit(3)", "raise SystemExit"] {
        let events = py.run(code);
        assert_eq!(expect_error(&events)["name"], "SystemExit", "{events:#?}");
    }
    let events = py.run("raise ValueError('bad') from KeyError('k')");
    let chained = expect_error(&events)["traceback"]
        .as_str()
        .unwrap()
        .to_owned();
    assert!(chained.contains("KeyError: 'k'") && chained.contains("ValueError: bad"));
    // Still alive, counting on.
    let events = py.run("6 * 7");
    assert_eq!(execution_count(&events), Some(6));
    assert_eq!(value(&events), "42");
}

/// The error of a request that must have one.
fn expect_error(events: &[Value]) -> &Value {
    error(events).unwrap_or_else(|| panic!("no error in {events:#?}"))
}

#[test]
fn sigint_interrupts_the_running_cell_only() {
    let mut py = Interpreter::start();
    // Between cells, SIGINT is ignored.
    py.guest.interrupt();
    assert_eq!(value(&py.run("1")), "1");

    py.guest.send(&json!({"code": "import time\nprint('started', flush=True)\nwhile True:\n    time.sleep(0.05)"}).to_string());
    let started = py.guest.next();
    assert_eq!(started["text"], "started\n", "{started}");
    py.guest.interrupt();
    let mut events = vec![started];
    while events.last().unwrap()["type"] != "end_of_execution" {
        events.push(py.guest.next());
    }
    check_protocol(&events);
    let error = expect_error(&events);
    assert_eq!(error["name"], "KeyboardInterrupt");
    assert!(!error["traceback"]
        .as_str()
        .unwrap()
        .contains("interpreter.py"));
    assert_eq!(value(&py.run("6 * 7")), "42");
}

#[test]
fn env_vars_hold_for_their_request_only() {
    let mut py = Interpreter::start();
    py.run("import os");
    let events = py.request(
        &json!({
            "code": "os.system('echo $ZTEE_GUEST_VAR')\nos.environ['ZTEE_GUEST_VAR']",
            "env_vars": {"ZTEE_GUEST_VAR": "for this request"},
        })
        .to_string(),
    );
    assert_eq!(output(&events, "stdout"), "for this request\n");
    assert_eq!(value(&events), "'for this request'");
    let after = py.request(r#"{"code": "'ZTEE_GUEST_VAR' in os.environ", "env_vars": null}"#);
    assert_eq!(value(&after), "False");
    // A variable that existed before gets its value back.
    py.run("os.environ['ZTEE_KEPT'] = 'old'");
    let events =
        py.request(r#"{"code": "os.environ['ZTEE_KEPT']", "env_vars": {"ZTEE_KEPT": "new"}}"#);
    assert_eq!(value(&events), "'new'");
    assert_eq!(value(&py.run("os.environ['ZTEE_KEPT']")), "'old'");
    // matplotlib draws headless, whatever the host's environment says.
    assert_eq!(value(&py.run("os.environ['MPLBACKEND']")), "'Agg'");
}

#[test]
fn malformed_requests_are_answered_and_count_as_nothing() {
    let mut py = Interpreter::start();
    for line in [
        "not json",
        "",
        "[1, 2]",
        r#"{"code": 5}"#,
        r#"{"env_vars": {}}"#,
        r#"{"code": "1", "env_vars": {"A": 1}}"#,
        r#"{"code": "1", "env_vars": "A=1"}"#,
        r#"{"code": "1", "env_vars": []}"#,
        r#"{"code": "1", "env_vars": {"A=B": "x"}}"#,
        "{\"code\": \"1\", \"env_vars\": {\"A\": \"nul\\u0000\"}}",
    ] {
        let events = py.request(line);
        assert_eq!(events.len(), 2, "{line}: {events:#?}");
        assert_eq!(events[0]["type"], "error", "{line}");
        assert_eq!(events[0]["name"], "InvalidRequest", "{line}");
        assert!(
            events[0]["value"].as_str().is_some_and(|v| !v.is_empty()),
            "{line}"
        );
    }
    let events = py.run("'A' in __import__('os').environ");
    assert_eq!(execution_count(&events), Some(1));
    assert_eq!(value(&events), "False");
}

#[test]
fn eof_on_stdin_ends_the_interpreter_with_status_0() {
    let mut py = Interpreter::start();
    // A thread the user left running does not keep it alive.
    py.run("import threading, time\nthreading.Thread(target=time.sleep, args=(600,)).start()");
    let status = py.guest.close();
    assert_eq!(status.code(), Some(0));
}

#[test]
fn a_warm_round_trip_takes_well_under_20_ms() {
    const RUNS: u32 = 50;
    let mut py = Interpreter::start();
    for _ in 0..5 {
        assert_eq!(value(&py.run("6*7")), "42");
    }
    let start = Instant::now();
    for _ in 0..RUNS {
        assert_eq!(value(&py.run("6*7")), "42");
    }
    let average = start.elapsed() / RUNS;
    println!("warm `6*7` round trip: {average:?} on average over {RUNS} runs");
    assert!(
        average < Duration::from_millis(20),
        "warm `6*7` round trip: {average:?} on average over {RUNS} runs"
    );
}

// ---- interpreter.js ----

#[test]
fn javascript_state_persists_and_the_completion_value_is_the_result() {
    let mut js = Interpreter::start_javascript();
    assert_eq!(value(&js.run("const n = 6 * 7; n")), "42");
    assert_eq!(value(&js.run("n + 1")), "43");
    let events = js.run("let y = 1;");
    assert!(main_result(&events).is_none(), "{events:#?}");
    assert_eq!(execution_count(&events), Some(3));
    assert_eq!(value(&js.run("y")), "1");
    assert_eq!(
        value(&js.run("({a: [1, {b: 'c'}]})")),
        "{ a: [ 1, { b: 'c' } ] }"
    );
    // A promise is awaited; a cell with a top-level await keeps a single expression's value.
    assert_eq!(value(&js.run("Promise.resolve(7)")), "7");
    assert_eq!(
        value(&js.run("await new Promise((resolve) => setTimeout(() => resolve(n), 10))")),
        "42"
    );
    // require() finds modules from the working directory, as a REPL started there does.
    std::fs::write(
        js.cwd.path().join("helper.js"),
        "module.exports = { twice: (x) => 2 * x }",
    )
    .unwrap();
    assert_eq!(value(&js.run("require('./helper').twice(21)")), "42");
}

#[test]
fn javascript_output_comes_before_the_result_and_errors_show_the_cells_frames() {
    let mut js = Interpreter::start_javascript();
    let events = js
        .run("console.log('hi', {a: 1}); console.error('oops'); process.stdout.write('raw\\n'); 5");
    assert_eq!(output(&events, "stdout"), "hi { a: 1 }\nraw\n");
    assert_eq!(output(&events, "stderr"), "oops\n");
    assert_eq!(value(&events), "5");

    let events = js.run("function f() { throw new TypeError('bad') }\nf()");
    let error = expect_error(&events);
    assert_eq!(
        (&error["name"], &error["value"]),
        (&json!("TypeError"), &json!("bad"))
    );
    let traceback = error["traceback"].as_str().unwrap();
    assert!(traceback.contains("<cell 2>:1"), "{traceback}");
    assert!(
        !traceback.contains("[eval]") && !traceback.contains("node:internal"),
        "{traceback}"
    );
    let events = js.run("throw 'a string'");
    assert_eq!(expect_error(&events)["value"], "a string");
    let events = js.run("missing + 1");
    assert_eq!(expect_error(&events)["name"], "ReferenceError");
    let events = js.run("const = ;");
    assert_eq!(expect_error(&events)["name"], "SyntaxError");
    // Text that is not valid UTF-16 is still one valid JSON line.
    assert_eq!(value(&js.run("'\\ud800x'.length")), "2");
    assert_eq!(value(&js.run("'\\ud800x'")), "'\\ud800x'");
    assert_eq!(value(&js.run("6 * 7")), "42");
}

#[test]
fn javascript_sigint_interrupts_a_loop_or_an_await_and_the_context_keeps_serving() {
    let mut js = Interpreter::start_javascript();
    js.guest.interrupt();
    assert_eq!(value(&js.run("1")), "1");
    for code in [
        "console.log('started'); while (true) {}",
        "console.log('started'); await new Promise(() => {})",
    ] {
        js.guest.send(&json!({ "code": code }).to_string());
        let started = js.guest.next();
        assert_eq!(started["text"], "started\n", "{started}");
        js.guest.interrupt();
        let mut events = vec![started];
        while events.last().unwrap()["type"] != "end_of_execution" {
            events.push(js.guest.next());
        }
        check_protocol(&events);
        assert_eq!(expect_error(&events)["name"], "KeyboardInterrupt");
    }
    assert_eq!(value(&js.run("6 * 7")), "42");
}

#[test]
fn javascript_env_vars_hold_for_their_request_and_bad_requests_are_answered() {
    let mut js = Interpreter::start_javascript();
    let events = js.request(
        &json!({"code": "process.env.GREETING", "env_vars": {"GREETING": "hi"}}).to_string(),
    );
    assert_eq!(value(&events), "'hi'");
    assert_eq!(value(&js.run("typeof process.env.GREETING")), "'undefined'");
    for bad in [
        "{not json",
        "[1]",
        r#"{"code": 1}"#,
        r#"{"code": "1", "env_vars": {"A": 1}}"#,
        r#"{"code": "1", "env_vars": {"A=B": "x"}}"#,
    ] {
        let events = js.request(bad);
        assert_eq!(expect_error(&events)["name"], "InvalidRequest", "{bad}");
        assert_eq!(execution_count(&events), None, "{bad}");
    }
    assert_eq!(value(&js.run("2")), "2");
    assert!(js.guest.close().success());
}

// ---- fs.py ----

/// fs.py with a home directory of its own.
struct Fs {
    guest: Guest,
    home: tempfile::TempDir,
}

impl Fs {
    fn start() -> Fs {
        let home = tempfile::tempdir().unwrap();
        let guest = Guest::start(
            "fs.py",
            home.path(),
            &[("HOME", home.path().to_str().unwrap())],
        );
        assert_eq!(guest.next(), json!({"ready": true}));
        Fs { guest, home }
    }

    /// The answer to one request line.
    fn call(&mut self, line: &str) -> Value {
        self.guest.send(line);
        let answer = self.guest.next();
        assert_eq!(answer.as_object().unwrap().len(), 1, "{answer}");
        answer
    }

    /// The result of a request that must succeed.
    fn ok(&mut self, request: Value) -> Value {
        let answer = self.call(&request.to_string());
        answer
            .get("ok")
            .unwrap_or_else(|| panic!("{request} failed: {answer}"))
            .clone()
    }

    /// Asserts that a request fails with `kind` and a message.
    fn fails(&mut self, request: Value, kind: &str) {
        self.fails_line(&request.to_string(), kind);
    }

    fn fails_line(&mut self, line: &str, kind: &str) {
        let answer = self.call(line);
        assert_eq!(answer["error"]["kind"], kind, "{line}: {answer}");
        assert!(
            answer["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{answer}"
        );
    }

    fn path(&self, relative: &str) -> PathBuf {
        self.home.path().join(relative)
    }

    fn abs(&self, relative: &str) -> String {
        self.path(relative).to_str().unwrap().to_owned()
    }
}

/// Checks an EntryInfo against the file's own metadata.
fn assert_entry(entry: &Value, path: &Path, kind: &str) {
    let meta = std::fs::symlink_metadata(path).unwrap();
    assert_eq!(entry["name"], path.file_name().unwrap().to_str().unwrap());
    assert_eq!(entry["type"], kind, "{entry}");
    assert_eq!(entry["path"], path.to_str().unwrap());
    assert_eq!(entry["size"], meta.len());
    assert_eq!(entry["mode"], meta.mode() & 0o7777);
    let permissions = entry["permissions"].as_str().unwrap();
    assert_eq!(permissions.len(), 10, "{entry}");
    let type_char = match kind {
        "file" => '-',
        "dir" => 'd',
        "symlink" => 'l',
        other => panic!("{other}"),
    };
    assert!(permissions.starts_with(type_char), "{entry}");
    let expected_owner = if meta.uid() == 0 {
        "root".to_owned()
    } else {
        entry["owner"].as_str().unwrap().to_owned()
    };
    assert_eq!(entry["owner"], expected_owner.as_str());
    assert!(entry["group"].as_str().is_some_and(|g| !g.is_empty()));
    let modified = entry["modified_time"].as_str().unwrap();
    assert_eq!(
        modified.len(),
        "2026-12-03T07:00:00.123456789Z".len(),
        "{modified}"
    );
    assert_eq!(
        humantime::parse_rfc3339(modified).unwrap(),
        meta.modified().unwrap()
    );
    let target = std::fs::read_link(path).ok();
    assert_eq!(
        entry["symlink_target"],
        json!(target.map(|t| t.to_str().unwrap().to_owned()))
    );
}

#[test]
fn stat_describes_files_directories_and_symlinks() {
    let mut fs = Fs::start();
    std::fs::create_dir(fs.path("dir")).unwrap();
    std::fs::write(fs.path("dir/file.txt"), "hello").unwrap();
    std::fs::set_permissions(
        fs.path("dir/file.txt"),
        std::fs::Permissions::from_mode(0o640),
    )
    .unwrap();
    std::os::unix::fs::symlink(fs.path("dir"), fs.path("link")).unwrap();

    let file = fs.ok(json!({"op": "stat", "path": fs.abs("dir/file.txt")}));
    assert_entry(&file, &fs.path("dir/file.txt"), "file");
    assert_eq!(file["permissions"], "-rw-r-----");
    assert_eq!(file["mode"], 0o640);
    assert_entry(
        &fs.ok(json!({"op": "stat", "path": "dir"})),
        &fs.path("dir"),
        "dir",
    );
    // A symlink is itself, not what it points to.
    let link = fs.ok(json!({"op": "stat", "path": "link"}));
    assert_entry(&link, &fs.path("link"), "symlink");
    assert_eq!(link["symlink_target"], fs.abs("dir"));
    // Relative paths and "~" are under the home; paths come back normalized.
    let same = fs.ok(json!({"op": "stat", "path": "~/dir/./sub/../file.txt"}));
    assert_eq!(same["path"], fs.abs("dir/file.txt"));

    fs.fails(json!({"op": "stat", "path": "missing"}), "not_found");
    fs.fails(
        json!({"op": "stat", "path": "dir/file.txt/below"}),
        "not_a_directory",
    );
    fs.fails(json!({"op": "stat", "path": ""}), "invalid_argument");
    fs.fails(json!({"op": "stat", "path": 7}), "invalid_argument");
}

#[test]
fn list_goes_depth_levels_deep_and_never_through_directory_symlinks() {
    let mut fs = Fs::start();
    std::fs::create_dir_all(fs.path("top/b/c")).unwrap();
    std::fs::write(fs.path("top/a.txt"), "a").unwrap();
    std::fs::write(fs.path("top/b/c/deep.txt"), "deep").unwrap();
    std::fs::create_dir_all(fs.path("elsewhere/inside")).unwrap();
    std::os::unix::fs::symlink(fs.path("elsewhere"), fs.path("top/b/link")).unwrap();

    let paths = |fs: &mut Fs, depth: u32| -> Vec<String> {
        let listed = fs.ok(json!({"op": "list", "path": "top", "depth": depth}));
        listed["entries"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                let path = e["path"].as_str().unwrap();
                path.strip_prefix(&fs.abs("top/")).unwrap().to_owned()
            })
            .collect()
    };
    assert_eq!(paths(&mut fs, 1), ["a.txt", "b"]);
    assert_eq!(paths(&mut fs, 2), ["a.txt", "b", "b/c", "b/link"]);
    assert_eq!(
        paths(&mut fs, 10),
        ["a.txt", "b", "b/c", "b/c/deep.txt", "b/link"]
    );
    let listed = fs.ok(json!({"op": "list", "path": fs.abs("top/b"), "depth": 1}));
    let entries = listed["entries"].as_array().unwrap();
    assert_entry(&entries[0], &fs.path("top/b/c"), "dir");
    assert_entry(&entries[1], &fs.path("top/b/link"), "symlink");

    fs.fails(
        json!({"op": "list", "path": "top/a.txt", "depth": 1}),
        "not_a_directory",
    );
    fs.fails(
        json!({"op": "list", "path": "nowhere", "depth": 1}),
        "not_found",
    );
    for depth in [json!(0), json!(-1), json!("1"), json!(true)] {
        fs.fails(
            json!({"op": "list", "path": "top", "depth": depth}),
            "invalid_argument",
        );
    }
}

#[test]
fn mkdir_move_and_remove() {
    let mut fs = Fs::start();
    assert_eq!(
        fs.ok(json!({"op": "mkdir", "path": "a/b/c"})),
        json!({"created": true})
    );
    assert!(fs.path("a/b/c").is_dir());
    assert_eq!(
        fs.ok(json!({"op": "mkdir", "path": "a/b"})),
        json!({"created": false})
    );
    std::fs::write(fs.path("a/file"), "x").unwrap();
    fs.fails(json!({"op": "mkdir", "path": "a/file"}), "already_exists");
    fs.fails(
        json!({"op": "mkdir", "path": "a/file/sub"}),
        "not_a_directory",
    );

    let moved =
        fs.ok(json!({"op": "move", "source": "a/file", "destination": fs.abs("a/b/renamed")}));
    assert_entry(&moved, &fs.path("a/b/renamed"), "file");
    assert!(!fs.path("a/file").exists());
    fs.fails(
        json!({"op": "move", "source": "a/file", "destination": "a/x"}),
        "not_found",
    );
    fs.fails(
        json!({"op": "move", "source": "a/b/renamed", "destination": "no/such/dir"}),
        "not_found",
    );
    fs.fails(
        json!({"op": "move", "source": "a/b/renamed", "destination": "a/b/c"}),
        "is_a_directory",
    );
    std::fs::create_dir_all(fs.path("full/inside")).unwrap();
    fs.fails(
        json!({"op": "move", "source": "a/b/c", "destination": "full"}),
        "already_exists",
    );
    fs.fails(json!({"op": "move", "source": "a/b"}), "invalid_argument");

    assert_eq!(
        fs.ok(json!({"op": "remove", "path": "a/b/renamed"})),
        json!({})
    );
    assert!(!fs.path("a/b/renamed").exists());
    assert_eq!(fs.ok(json!({"op": "remove", "path": "a"})), json!({}));
    assert!(!fs.path("a").exists());
    fs.fails(json!({"op": "remove", "path": "a"}), "not_found");
}

#[test]
fn remove_takes_a_symlink_not_its_target() {
    let mut fs = Fs::start();
    std::fs::create_dir_all(fs.path("target/keep")).unwrap();
    std::fs::write(fs.path("target/keep/file"), "kept").unwrap();
    std::fs::create_dir(fs.path("tree")).unwrap();
    std::os::unix::fs::symlink(fs.path("target"), fs.path("tree/link")).unwrap();
    std::os::unix::fs::symlink(fs.path("target"), fs.path("toplink")).unwrap();

    fs.ok(json!({"op": "remove", "path": "toplink"}));
    assert!(std::fs::symlink_metadata(fs.path("toplink")).is_err());
    // A tree with a link to a directory inside: the tree goes, the link's target stays.
    fs.ok(json!({"op": "remove", "path": "tree"}));
    assert!(!fs.path("tree").exists());
    assert_eq!(
        std::fs::read_to_string(fs.path("target/keep/file")).unwrap(),
        "kept"
    );
}

#[test]
fn watchers_see_what_happens_below_them() {
    let mut fs = Fs::start();
    std::fs::create_dir_all(fs.path("watched/existing")).unwrap();
    let watcher = fs.ok(json!({"op": "watch_start", "path": "watched", "recursive": true}))
        ["watcher"]
        .clone();
    let flat = fs.ok(json!({"op": "watch_start", "path": "watched", "recursive": false}))
        ["watcher"]
        .clone();
    assert_ne!(watcher, flat);

    std::fs::write(fs.path("watched/new.txt"), "x").unwrap();
    std::fs::write(fs.path("watched/existing/inner.txt"), "y").unwrap();
    std::fs::create_dir_all(fs.path("watched/fresh/deeper")).unwrap();
    std::fs::write(fs.path("watched/fresh/deeper/f"), "z").unwrap();
    std::fs::remove_file(fs.path("watched/new.txt")).unwrap();
    std::fs::set_permissions(
        fs.path("watched/existing"),
        std::fs::Permissions::from_mode(0o700),
    )
    .unwrap();
    std::fs::rename(fs.path("watched/existing"), fs.path("watched/moved")).unwrap();
    std::fs::write(fs.path("watched/moved/after-move"), "w").unwrap();
    // An upload as the agent writes it: a staging copy renamed into place.
    std::fs::write(fs.path("watched/.upload.txt.ztee-upload-42"), "u").unwrap();
    std::fs::rename(
        fs.path("watched/.upload.txt.ztee-upload-42"),
        fs.path("watched/upload.txt"),
    )
    .unwrap();

    let events = |fs: &mut Fs, watcher: &Value| -> Vec<(String, String)> {
        let polled = fs.ok(json!({"op": "watch_poll", "watcher": watcher}));
        polled["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(|e| {
                assert_eq!(e.as_object().unwrap().len(), 2, "{e}");
                (
                    e["name"].as_str().unwrap().to_owned(),
                    e["type"].as_str().unwrap().to_owned(),
                )
            })
            .collect()
    };
    let seen = events(&mut fs, &watcher);
    for expected in [
        ("new.txt", "create"),
        ("new.txt", "write"),
        ("existing/inner.txt", "create"),
        ("fresh", "create"),
        ("fresh/deeper", "create"),
        ("fresh/deeper/f", "create"),
        ("new.txt", "remove"),
        ("existing", "chmod"),
        // As envd reports a move: the old name renamed, the new name created.
        ("existing", "rename"),
        ("moved", "create"),
        ("moved/after-move", "create"),
        ("upload.txt", "create"),
    ] {
        assert!(
            seen.contains(&(expected.0.to_owned(), expected.1.to_owned())),
            "{expected:?} not in {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|(name, _)| name.contains("ztee-upload")),
        "the staging copy of an upload was reported: {seen:?}"
    );
    let created = seen
        .iter()
        .position(|e| *e == ("new.txt".into(), "create".into()));
    let removed = seen
        .iter()
        .position(|e| *e == ("new.txt".into(), "remove".into()));
    assert!(created < removed, "{seen:?}");
    // Nothing new: nothing to report.
    assert!(events(&mut fs, &watcher).is_empty());

    // The flat watcher sees only the directory's own entries.
    let flat_seen = events(&mut fs, &flat);
    assert!(
        flat_seen.contains(&("new.txt".into(), "remove".into())),
        "{flat_seen:?}"
    );
    assert!(
        flat_seen.iter().all(|(name, _)| !name.contains('/')),
        "{flat_seen:?}"
    );

    assert_eq!(
        fs.ok(json!({"op": "watch_stop", "watcher": watcher})),
        json!({})
    );
    fs.fails(json!({"op": "watch_poll", "watcher": watcher}), "not_found");
    fs.fails(json!({"op": "watch_stop", "watcher": watcher}), "not_found");
    fs.fails(
        json!({"op": "watch_start", "path": "nowhere", "recursive": true}),
        "not_found",
    );
    std::fs::write(fs.path("plain"), "").unwrap();
    fs.fails(
        json!({"op": "watch_start", "path": "plain", "recursive": false}),
        "not_a_directory",
    );
}

#[test]
fn malformed_fs_requests_are_answered_and_eof_ends_with_status_0() {
    let mut fs = Fs::start();
    for line in [
        "not json",
        "",
        "[]",
        r#"{"path": "x"}"#,
        r#"{"op": "explode", "path": "x"}"#,
        r#"{"op": "stat"}"#,
        r#"{"op": "stat", "path": "nul\u0000byte"}"#,
        r#"{"op": "watch_start", "path": ".", "recursive": "yes"}"#,
        r#"{"op": "watch_poll", "watcher": 1}"#,
    ] {
        fs.fails_line(line, "invalid_argument");
    }
    // Still serving.
    let home = fs.ok(json!({"op": "stat", "path": "."}));
    assert_eq!(home["path"], fs.home.path().to_str().unwrap());
    assert_eq!(fs.guest.close().code(), Some(0));
}
