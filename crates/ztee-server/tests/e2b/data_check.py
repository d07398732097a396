"""Drives the official `e2b-code-interpreter` SDK, unchanged, against ztee's data image.

Run by tests/e2b_data_image.rs with E2B_API_URL, E2B_SANDBOX_URL and E2B_API_KEY pointing at a
ztee gateway whose `code-interpreter-v1` template boots the `data` image (Debian's pandas,
matplotlib and nodejs) in a real microVM. Each check asserts; the program prints one JSON line of
what it measured and exits 0 only if every check passed.
"""

import base64
import json
import time

from e2b_code_interpreter import Sandbox
from e2b_code_interpreter.charts import BarChart, ChartType, LineChart, PieChart, SuperChart

PAN = "4111" + "1111" * 3
# The code builds the number at run time: a PAN written in the code itself is masked on the way
# in, and this checks the way out.
PAN_EXPR_PY = "'4111' + '1111' * 3"
PAN_EXPR_JS = "'4111' + '1111'.repeat(3)"

report = {}


def check(name, condition, detail=""):
    if not condition:
        raise AssertionError(f"{name}: {detail}")
    report.setdefault("passed", []).append(name)


def run(code, **kwargs):
    # Generous bounds: this runs under a software CPU, where a first pandas import takes tens of
    # seconds and more when the machine is busy.
    return sbx.run_code(code, timeout=240, request_timeout=240, **kwargs)


def timed(label, code, **kwargs):
    started = time.monotonic()
    execution = run(code, **kwargs)
    report.setdefault("seconds", {})[label] = round(time.monotonic() - started, 2)
    return execution


# The first create of an image builds its root file system (hundreds of MB): allow minutes.
sbx = Sandbox.create(timeout=600, request_timeout=480)
report["sandbox"] = sbx.sandbox_id

# A DataFrame: HTML and text, a card number in a cell masked in both.
ex = timed(
    "pandas import and DataFrame",
    f"import pandas as pd\ndf = pd.DataFrame({{'card': [{PAN_EXPR_PY}, 'none'], 'amount': [12.5, 25.0]}})\ndf",
)
check("DataFrame runs", ex.error is None, ex.error)
result = ex.results[0] if ex.results else None
check("DataFrame is the main result", result is not None and result.is_main_result, ex.results)
check("DataFrame as HTML", "<table" in (result.html or "") and "amount" in result.html, result.html)
check("DataFrame as text", "amount" in (result.text or ""), result.text)
check(
    "PAN in a DataFrame is masked",
    PAN not in (result.html or "") + (result.text or "") and "1111" in result.text,
    result.text,
)

# State lives across runs.
ex = run("df['amount'].sum()")
check("state across runs", ex.text == "37.5", ex.text)

# A line chart: a PNG and its data.
ex = timed(
    "matplotlib line chart",
    "import matplotlib.pyplot as plt\n"
    "plt.plot([1, 2, 3], [4, 5, 6.5], label='revenue')\n"
    "plt.title('Sales')\nplt.xlabel('Time (s)')\nplt.ylabel('Revenue')\nplt.show()",
)
check("line chart runs", ex.error is None, ex.error)
figure = ex.results[0] if ex.results else None
png = base64.b64decode(figure.png) if figure is not None and figure.png else b""
check("figure as PNG", png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 1000, len(png))
chart = figure.chart
check("line chart data", isinstance(chart, LineChart) and chart.type == ChartType.LINE, chart)
check(
    "line chart labels",
    (chart.title, chart.x_label, chart.x_unit, chart.y_label) == ("Sales", "Time (s)", "s", "Revenue"),
    chart.to_dict(),
)
check(
    "line chart points",
    [(e.label, e.points) for e in chart.elements] == [("revenue", [(1, 4), (2, 5), (3, 6.5)])],
    chart.to_dict(),
)

# A bar chart and a pie chart, and two charts in one figure.
ex = run(
    "plt.bar(['Author A', 'Author B'], [100, 200], label='Books Sold')\nplt.title('Books')\nplt.show()"
)
chart = ex.results[0].chart if ex.results else None
check(
    "bar chart data",
    isinstance(chart, BarChart)
    and [(b.label, b.value, b.group) for b in chart.elements]
    == [("Author A", 100, "Books Sold"), ("Author B", 200, "Books Sold")],
    chart and chart.to_dict(),
)
ex = run("plt.pie([1, 2, 3], labels=['a', 'b', 'c'])\nplt.show()")
chart = ex.results[0].chart if ex.results else None
check(
    "pie chart data",
    isinstance(chart, PieChart) and [(p.label, p.angle) for p in chart.elements] == [("a", 60), ("b", 120), ("c", 180)],
    chart and chart.to_dict(),
)
ex = run(
    "fig, (left, right) = plt.subplots(1, 2)\nleft.plot([1, 2], [3, 4])\nright.bar(['x', 'y'], [1, 2])\n"
    "fig.suptitle('Both')\nplt.show()"
)
chart = ex.results[0].chart if ex.results else None
check(
    "two charts in one figure",
    isinstance(chart, SuperChart)
    and chart.title == "Both"
    and [type(c) for c in chart.elements] == [LineChart, BarChart],
    chart and chart.to_dict(),
)

# An exception, with its traceback.
ex = run("1 / 0")
check("error", ex.error is not None and ex.error.name == "ZeroDivisionError", ex.error)

# JavaScript, where the image has node: its own context, state kept, output masked.
ex = timed("first JavaScript run", "const n = 6 * 7; n", language="js")
check("JavaScript result", ex.error is None and ex.text == "42", (ex.error, ex.text))
ex = run("n + 1", language="js")
check("JavaScript state across runs", ex.text == "43", (ex.error, ex.text))
ex = run(f"console.log('card', {PAN_EXPR_JS}); 'done'", language="js")
stdout = "".join(ex.logs.stdout)
check("JavaScript output masked", PAN not in stdout and "card" in stdout and "1111" in stdout, stdout)
ex = run("missing + 1", language="js")
check(
    "JavaScript error",
    ex.error is not None and ex.error.name == "ReferenceError" and "missing" in ex.error.value,
    ex.error,
)
context = sbx.create_code_context(language="js", request_timeout=240)
ex = run("typeof n", context=context)
check(
    "a new JavaScript context starts empty",
    context.language == "javascript" and ex.text == "'undefined'",
    (context.language, ex.text),
)
ex = run("df.shape")
check("the Python context is untouched", ex.text == "(2, 2)", ex.text)

sbx.kill()
print(json.dumps(report))
