"""A persistent Python execution context inside a ztee sandbox, driven over JSON lines.

Why this exists: the gateway's E2B-compatible API lets the official `e2b-code-interpreter` SDK
run code against ztee unchanged. E2B runs that code in a Jupyter kernel; a ztee sandbox has only
its image's own python3 and runs this program as the unprivileged sandbox user, so this one file
does, with the standard library alone, what the SDK needs from a kernel: one namespace that lives
across requests, IPython's rule that a final expression is the cell's result, rich reprs (HTML,
PNG, ...), matplotlib figures as PNG, and everything the code writes to fd 1 and fd 2 (print, C
extensions, child processes) captured as events.

Protocol (the host runs `python3 -u interpreter.py` with the context's cwd and environment):
- fd 1 as inherited is the protocol channel and carries nothing else: it moves to a private
  close-on-exec fd, and fd 1 and fd 2 become pipes read by two threads that turn their bytes into
  `stdout`/`stderr` events. Requests likewise move to a private fd: fd 0 becomes /dev/null, so
  `input()` or a child process can never swallow a request.
- The first line is {"type": "ready"}. Each request line is {"code": str, "env_vars": {str: str}
  or null}; its answer is a series of lines: stdout/stderr events, then number_of_executions,
  results (display() calls, the main result, open figures), an error if the cell failed, and
  always {"type": "end_of_execution"} last. A malformed request gets an "InvalidRequest" error and
  end_of_execution, and counts as no execution. EOF on stdin ends the process with status 0.
- Output that arrives between requests (a background thread or process) is sent as it arrives,
  so the host sees it before the next request's own lines.
- SIGINT interrupts the running cell (a KeyboardInterrupt error) and is ignored between cells.
"""

import ast
import base64
import builtins
import codecs
import datetime
import io
import json
import linecache
import os
import select
import signal
import sys
import threading
import traceback
import types
import warnings

# Most output bytes one stdout/stderr event carries.
CHUNK = 64 * 1024

# A result's formats, by the IPython method that makes each one.
REPR_METHODS = (
    ("html", "_repr_html_"),
    ("markdown", "_repr_markdown_"),
    ("svg", "_repr_svg_"),
    ("png", "_repr_png_"),
    ("jpeg", "_repr_jpeg_"),
    ("latex", "_repr_latex_"),
    ("json", "_repr_json_"),
    ("javascript", "_repr_javascript_"),
)

# The same formats by MIME type, for objects that give a `_repr_mimebundle_`.
MIME_FORMATS = {
    "text/plain": "text",
    "text/html": "html",
    "text/markdown": "markdown",
    "image/svg+xml": "svg",
    "image/png": "png",
    "image/jpeg": "jpeg",
    "text/latex": "latex",
    "application/json": "json",
    "application/javascript": "javascript",
}


# NaN and infinities are not JSON: a value holding one cannot be sent.
_JSON = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def _timestamp():
    return datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


class Protocol:
    """The private channel to the host: whole JSON lines, written under one lock so the two
    output threads and the main thread never interleave inside a line."""

    def __init__(self, fd):
        self._fd = fd
        self._lock = threading.Lock()

    def send(self, *events):
        # JSON escapes line breaks, so an event is one line. Text is UTF-8; a lone
        # surrogate (valid in a Python str, not in JSON) becomes "?".
        text = "".join(_JSON.encode(e) + "\n" for e in events)
        data = memoryview(text.encode("utf-8", errors="replace"))
        with self._lock:
            while data:
                data = data[os.write(self._fd, data) :]


class Capture:
    """Points `fd` (1 or 2) at a pipe and sends what arrives there as `kind` events.

    A thread sends output as it arrives; `drain` returns once everything written to the fd so
    far has been sent, without waking that thread. Both read only while holding one lock, and
    send what they read before releasing it: so once `drain` holds the lock, all that was read
    has been sent, and it sends the rest itself, reading until the pipe is empty.
    """

    def __init__(self, kind, fd, protocol):
        self._kind = kind
        self._protocol = protocol
        self._lock = threading.Lock()
        # The private write end stays open, so the pipe never reports a hang-up, even if the
        # user's code closes the fd.
        self._read_fd, write_fd = os.pipe()
        os.set_blocking(self._read_fd, False)
        os.dup2(write_fd, fd)  # inheritable: child processes write into the pipe too
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        threading.Thread(target=self._follow, name=f"capture-{kind}", daemon=True).start()

    def drain(self):
        with self._lock:
            self._read_available()
            # The end of a request's output: a partial UTF-8 sequence is not held for later.
            self._send(self._decoder.decode(b"", True))

    def _follow(self):
        poller = select.poll()
        poller.register(self._read_fd, select.POLLIN)
        while True:
            poller.poll()
            with self._lock:
                self._read_available()

    def _read_available(self):
        while True:
            try:
                data = os.read(self._read_fd, CHUNK)
            except BlockingIOError:
                return
            self._send(self._decoder.decode(data))

    def _send(self, text):
        if text:
            self._protocol.send({"type": self._kind, "text": text, "timestamp": _timestamp()})


class Interpreter:
    """One execution context: a `__main__` namespace that lives across requests."""

    def __init__(self, protocol, captures, streams):
        self._protocol = protocol
        self._captures = captures
        self._streams = streams
        self._count = 0
        self._interruptible = False
        self._results = []  # the running cell's result events, held until its output is sent
        self._shown = []  # the figures among them, not to be sent twice
        main = types.ModuleType("__main__")
        main.__dict__["__builtins__"] = builtins
        # pickle and friends find functions defined in cells through sys.modules["__main__"].
        sys.modules["__main__"] = main
        self._namespace = main.__dict__
        builtins.display = self._display
        signal.signal(signal.SIGINT, self._on_sigint)

    def handle(self, line):
        """Answers one request line."""
        try:
            code, env_vars = _parse_request(line)
            saved_env = _set_env(env_vars)
        except ValueError as exc:
            self._protocol.send(
                {
                    "type": "error",
                    "name": "InvalidRequest",
                    "value": str(exc),
                    "traceback": f"InvalidRequest: {exc}",
                },
                {"type": "end_of_execution"},
            )
            return
        self._count += 1
        try:
            error = self._run_cell(code, f"<cell {self._count}>")
        finally:
            _restore_env(saved_env)
        self._drain()
        events = [{"type": "number_of_executions", "execution_count": self._count}]
        events += self._results
        if error is not None:
            events.append(_error_event(error))
        events.append({"type": "end_of_execution"})
        self._results, self._shown = [], []
        self._protocol.send(*events)

    def _run_cell(self, code, filename):
        """Runs one cell, collecting its results; returns the exception it ended with, if any."""
        error = None
        try:
            self._interruptible = True
            try:
                value = self._execute(code, filename)
                if value is not None:
                    self._results.append(self._result(value, main=True))
            finally:
                self._interruptible = False
        except BaseException as exc:  # SystemExit and KeyboardInterrupt are the cell's errors too
            error = exc
        try:
            self._show_open_figures()
        except Exception as exc:
            if error is None:
                error = exc
        return error

    def _execute(self, code, filename):
        """Execs `code`; if its last statement is an expression, returns that expression's value."""
        # Tracebacks read cell lines from linecache; an entry without mtime is never evicted.
        linecache.cache[filename] = (len(code), None, code.splitlines(True), filename)
        try:
            tree = ast.parse(code, filename)
            last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
            body = compile(tree, filename, "exec")
            expression = compile(ast.Expression(last.value), filename, "eval") if last else None
        except (SyntaxError, ValueError) as exc:  # ValueError: a NUL byte in the source
            raise exc.with_traceback(None)  # no frames: the compiler's are not the user's
        exec(body, self._namespace)
        return eval(expression, self._namespace) if expression is not None else None

    def _display(self, *objects):
        """The `display` builtin: each object becomes a result of the running cell."""
        for obj in objects:
            self._results.append(self._result(obj, main=False))

    def _result(self, obj, main):
        figure_type = getattr(sys.modules.get("matplotlib.figure"), "Figure", None)
        if figure_type is not None and isinstance(obj, figure_type):
            self._shown.append(obj)
            return {"type": "result", **_figure_formats(obj), "is_main_result": False}
        return {"type": "result", **_formats(obj), "is_main_result": main}

    def _show_open_figures(self):
        """Sends the figures pyplot still holds, as a notebook's inline backend does, then
        closes them all. Looks only if the user's code imported pyplot."""
        pyplot = sys.modules.get("matplotlib.pyplot")
        if pyplot is None:
            return
        try:
            for number in pyplot.get_fignums():
                figure = pyplot.figure(number)
                if not any(figure is shown for shown in self._shown):
                    self._results.append(self._result(figure, main=False))
        finally:
            pyplot.close("all")

    def _drain(self):
        """Returns once everything the cell wrote to fd 1 and fd 2 has been sent."""
        for stream in (*self._streams, sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (AttributeError, OSError, ValueError):  # replaced or closed by the user
                pass
        for capture in self._captures:
            capture.drain()

    def _on_sigint(self, _signum, _frame):
        if self._interruptible:
            raise KeyboardInterrupt


def _parse_request(line):
    """The code and env_vars of one request line; a ValueError says what is wrong with it."""
    try:
        request = json.loads(line)
    except (ValueError, RecursionError) as exc:
        raise ValueError(f"a request is one JSON object per line: {exc}") from None
    if not isinstance(request, dict):
        raise ValueError("a request is a JSON object")
    code = request.get("code")
    if not isinstance(code, str):
        raise ValueError('"code" must be a string')
    env_vars = request.get("env_vars")
    if env_vars is None:
        env_vars = {}
    if not isinstance(env_vars, dict) or not all(isinstance(v, str) for v in env_vars.values()):
        raise ValueError('"env_vars" must be an object of strings')
    return code, env_vars


def _set_env(env_vars):
    """Sets `env_vars` in os.environ; returns each name's previous value (None: unset)."""
    saved = {}
    try:
        for name, value in env_vars.items():
            saved[name] = os.environ.get(name)
            os.environ[name] = value
    except ValueError as exc:  # "=" or NUL in a name, NUL in a value
        _restore_env(saved)
        raise ValueError(f"env_vars: {exc}") from None
    return saved


def _restore_env(saved):
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


def _formats(obj):
    """The formats of a result, built like IPython's display formatter: `text` is repr(obj), the
    others come from the object's `_repr_*_` methods that return something."""
    formats = {"text": repr(obj)}
    # Classes have the methods unbound; some objects (mocks, proxies) claim every attribute.
    if isinstance(obj, type) or _claims_every_attribute(obj):
        return formats
    bundle = _call_repr(obj, "_repr_mimebundle_")
    if isinstance(bundle, tuple):  # (data, metadata)
        bundle = bundle[0]
    if isinstance(bundle, dict):
        for mime, value in bundle.items():
            if mime in MIME_FORMATS:
                _add_format(formats, MIME_FORMATS[mime], value)
    for name, method in REPR_METHODS:
        if name not in formats:
            _add_format(formats, name, _call_repr(obj, method))
    return formats


def _claims_every_attribute(obj):
    try:
        return getattr(obj, "_ztee_no_such_attribute_", None) is not None
    except Exception:
        return True


def _call_repr(obj, method):
    try:
        function = getattr(obj, method, None)
        return function() if callable(function) else None
    except Exception as exc:
        # As IPython does: the format is left out and the failure shown with the cell's output.
        print(f"{type(obj).__name__}.{method}() failed: {exc!r}", file=sys.stderr)
        return None


def _add_format(formats, name, value):
    if isinstance(value, tuple):  # (data, metadata)
        value = value[0]
    if name in ("png", "jpeg") and isinstance(value, (bytes, bytearray)):
        formats[name] = base64.b64encode(value).decode("ascii")
    elif name == "json" and isinstance(value, (dict, list)) and _is_json(value):
        formats[name] = value
    elif isinstance(value, str):
        formats[name] = "".join(value.split()) if name in ("png", "jpeg") else value


def _is_json(value):
    try:
        _JSON.encode(value)
        return True
    except (TypeError, ValueError, RecursionError):
        return False


def _figure_formats(figure):
    """A matplotlib figure as a result: its PNG (as notebooks show it), its repr, and its data as
    a `chart` where the figure is one E2B's SDKs model (line, scatter, bar, pie)."""
    png = io.BytesIO()
    figure.savefig(png, format="png", bbox_inches="tight")  # also lays out the tick labels
    formats = {"text": repr(figure), "png": base64.b64encode(png.getvalue()).decode("ascii")}
    try:
        chart = _figure_chart(figure)
    except Exception as exc:  # a figure this code does not understand still has its PNG
        print(f"chart data not extracted: {exc!r}", file=sys.stderr)
        chart = None
    if chart is not None:
        formats["chart"] = chart
    return formats


def _figure_chart(figure):
    """The figure's data in the shape of E2B's `Chart`: one axes' chart, or a `superchart` of
    several; None for a figure with nothing plotted."""
    charts = [chart for chart in map(_axes_chart, figure.get_axes()) if chart is not None]
    suptitle = figure._suptitle.get_text() if getattr(figure, "_suptitle", None) else ""
    if not charts:
        return None
    if len(charts) == 1:
        if not charts[0]["title"]:
            charts[0]["title"] = suptitle
        return charts[0]
    return {"type": "superchart", "title": suptitle, "elements": charts}


def _axes_chart(ax):
    from matplotlib.collections import PathCollection
    from matplotlib.container import BarContainer
    from matplotlib.patches import Wedge

    title = ax.get_title()
    wedges = [patch for patch in ax.patches if isinstance(patch, Wedge)]
    if wedges:
        elements = [
            # Wedge angles are kept in single precision: 7 digits are all they have.
            {
                "label": _label(w),
                "angle": _number(abs(w.theta2 - w.theta1), digits=7),
                "radius": _number(w.r),
            }
            for w in wedges
        ]
        return {"type": "pie", "title": title, "elements": elements}
    bars = [c for c in ax.containers if isinstance(c, BarContainer)]
    lines = [line for line in ax.get_lines() if line.get_visible()]
    points = [c for c in ax.collections if isinstance(c, PathCollection) and len(c.get_offsets())]
    if bars and not lines and not points:
        return {"type": "bar", **_axes_labels(ax), "elements": _bar_elements(ax, bars)}
    if lines and not points and not bars:
        kind, series = "line", [(line, line.get_xydata()) for line in lines]
    elif points and not lines and not bars:
        kind, series = "scatter", [(c, c.get_offsets()) for c in points]
    elif lines or points or bars:
        return {"type": "unknown", "title": title, "elements": []}
    else:
        return None
    x_axis, y_axis = _Axis(ax.xaxis, ax.get_xscale()), _Axis(ax.yaxis, ax.get_yscale())
    elements = [
        {
            "label": _label(artist),
            "points": [[x_axis.value(x), y_axis.value(y)] for x, y in data],
        }
        for artist, data in series
    ]
    return {
        "type": kind,
        **_axes_labels(ax),
        **x_axis.ticks("x"),
        **y_axis.ticks("y"),
        "elements": elements,
    }


def _axes_labels(ax):
    x_label, y_label = ax.get_xlabel(), ax.get_ylabel()
    return {
        "title": ax.get_title(),
        "x_label": x_label or None,
        "y_label": y_label or None,
        "x_unit": _unit(x_label),
        "y_unit": _unit(y_label),
    }


def _unit(label):
    """The unit a label names at its end, as in "Time (s)" or "Price [USD]"."""
    label = label.strip()
    for opening, closing in (("(", ")"), ("[", "]")):
        if label.endswith(closing) and opening in label:
            unit = label[label.rindex(opening) + 1 : -1].strip()
            return unit or None
    return None


def _bar_elements(ax, containers):
    elements = []
    for container in containers:
        horizontal = getattr(container, "orientation", "vertical") == "horizontal"
        axis = ax.yaxis if horizontal else ax.xaxis
        names = _tick_names(axis)
        for bar in container.patches:
            if horizontal:
                position, value = bar.get_y() + bar.get_height() / 2, bar.get_width()
            else:
                position, value = bar.get_x() + bar.get_width() / 2, bar.get_height()
            label = names.get(round(position, 6)) or _category(axis, position) or _text(position)
            elements.append({"label": label, "group": _label(container), "value": _number(value)})
    return elements


def _tick_names(axis):
    """Tick positions (rounded) and their label texts, where a tick has one."""
    names = {}
    for location, label in zip(axis.get_majorticklocs(), axis.get_majorticklabels()):
        if label.get_text():
            names[round(float(location), 6)] = label.get_text()
    return names


def _category(axis, position):
    """The category name at `position` on a categorical axis (`plt.bar(["a", "b"], ...)`)."""
    mapping = getattr(getattr(axis, "units", None), "_mapping", None)
    if not mapping:
        return None
    for name, index in mapping.items():
        if index == round(position):
            return str(name)
    return None


class _Axis:
    """How one axis' values are shown: numbers, dates (ISO 8601) or category names."""

    def __init__(self, axis, scale):
        self._axis = axis
        # get_converter() since matplotlib 3.10, the attribute before it (Debian 12 has 3.6).
        get_converter = getattr(axis, "get_converter", None)
        converter = get_converter() if callable(get_converter) else getattr(axis, "converter", None)
        module = type(converter).__module__ if converter is not None else ""
        if module == "matplotlib.dates":
            self.scale = "datetime"
        elif module == "matplotlib.category":
            self.scale = "categorical"
        else:
            self.scale = scale

    def value(self, number, digits=None):
        if self.scale == "datetime":
            from matplotlib.dates import num2date

            return num2date(number).isoformat()
        if self.scale == "categorical":
            return _category(self._axis, number) or _number(number)
        return _number(number, digits)

    def ticks(self, name):
        low, high = sorted(self._axis.get_view_interval())
        shown = [
            (float(location), label.get_text())
            for location, label in zip(self._axis.get_majorticklocs(), self._axis.get_majorticklabels())
            if low <= location <= high
        ]
        return {
            f"{name}_ticks": [self.value(location, digits=12) for location, _ in shown],
            f"{name}_tick_labels": [text for _, text in shown],
            f"{name}_scale": self.scale,
        }


def _label(artist):
    """An artist's label; matplotlib's own placeholders ("_child0": not in the legend) are ""."""
    label = artist.get_label()
    return "" if not isinstance(label, str) or label.startswith("_") else label


def _number(value, digits=None):
    """A plain JSON number: int when whole, None for NaN and infinities (not JSON); rounded to
    `digits` significant digits where the value is computed (ticks at 1.2000000000000002)."""
    value = float(value)
    if value != value or value in (float("inf"), float("-inf")):
        return None
    if digits is not None:
        value = float(f"{value:.{digits}g}")
    return int(value) if value.is_integer() and abs(value) < 2**53 else value


def _text(number):
    value = _number(number)
    return "" if value is None else str(value)


def _error_event(exc):
    """An error event whose traceback shows the user's frames only, none of this file's (the
    cell's caller, the SIGINT handler, display())."""
    report = traceback.TracebackException(type(exc), exc, exc.__traceback__)
    _hide_own_frames(report)
    try:
        value = str(exc)
    except Exception:
        value = f"<unprintable {type(exc).__name__} object>"
    return {
        "type": "error",
        "name": type(exc).__name__,
        "value": value,
        "traceback": "".join(report.format()).rstrip("\n"),
    }


def _hide_own_frames(report):
    frames = [frame for frame in report.stack if frame.filename != _THIS_FILE]
    report.stack = traceback.StackSummary.from_list(frames)
    chained = (report.__cause__, report.__context__, *(getattr(report, "exceptions", None) or ()))
    for other in chained:
        if other is not None:
            _hide_own_frames(other)


_THIS_FILE = _error_event.__code__.co_filename


def main():
    protocol = Protocol(os.dup(1))  # os.dup makes close-on-exec (non-inheritable) fds
    requests = os.fdopen(os.dup(0), "rb")
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    captures = [Capture("stdout", 1, protocol), Capture("stderr", 2, protocol)]
    sys.stdout, sys.stderr = (
        open(fd, "w", encoding="utf-8", errors="backslashreplace", buffering=1, closefd=False)
        for fd in (1, 2)
    )
    os.environ["MPLBACKEND"] = "Agg"
    # With Agg, plt.show() only warns; the figures it would show are sent when the cell ends.
    warnings.filterwarnings("ignore", message="FigureCanvasAgg is non-interactive")
    # Like IPython and `python -c`: modules in the working directory are importable. This
    # program's own directory is not on the path: its neighbours (fs.py) are not the user's.
    here = os.path.dirname(os.path.abspath(_THIS_FILE))
    sys.path[:] = ["", *(entry for entry in sys.path if entry != here)]
    interpreter = Interpreter(protocol, captures, (sys.stdout, sys.stderr))
    protocol.send({"type": "ready"})
    for line in requests:
        interpreter.handle(line)
    # The host has closed stdin: end now, whatever threads the user's code left running.
    os._exit(0)


if __name__ == "__main__":
    main()
