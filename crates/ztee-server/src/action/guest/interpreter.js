// A persistent JavaScript execution context inside a ztee sandbox, driven over JSON lines: the
// JavaScript counterpart of interpreter.py, for images that have node.
//
// Why this exists: E2B's code interpreter runs JavaScript cells (`run_code(..., language="js")`)
// in a kernel that keeps its globals between runs. A ztee sandbox has only its image's own node,
// run as the unprivileged sandbox user, so this one file does what the SDK needs: one global scope
// that lives across requests (a top-level `const` stays defined), the completion value of a cell as
// its result (awaited when it is a promise), console output as events, and errors with their stack.
//
// Protocol (the host runs `node -e <this program>` with the context's cwd and environment), the
// same as interpreter.py's:
// - The first line is {"type": "ready"}. Each request line is {"code": str, "env_vars": {str: str}
//   or null}; its answer is stdout/stderr events, then number_of_executions, the result if the cell
//   has a value, an error if it failed, and always {"type": "end_of_execution"} last. A malformed
//   request gets an "InvalidRequest" error and end_of_execution, and counts as no execution. EOF on
//   stdin ends the process with status 0.
// - fd 1 is the protocol channel. Node cannot move it aside as Python does, so what the cell writes
//   through process.stdout and process.stderr (console.log included) becomes events instead; a child
//   process started with `stdio: "inherit"` writes raw bytes there, which the host reads as a broken
//   context and ends it.
// - Output that arrives between requests (a timer, a promise the cell did not await) is sent as it
//   arrives, so the host sees it before the next request's own lines.
// - SIGINT interrupts the running cell, synchronous code or an awaited promise, and is ignored
//   between cells.
"use strict";

const vm = require("vm");
const util = require("util");
const path = require("path");
const readline = require("readline");
const Module = require("module");

// The protocol's own references, taken before any cell can replace the globals they come from.
const stringify = JSON.stringify;
const writeProtocol = process.stdout.write.bind(process.stdout);

// A string with a lone surrogate is not valid UTF-8 JSON for the host: such halves become U+FFFD.
const LONE_SURROGATE = /[\ud800-\udbff](?![\udc00-\udfff])|(?<![\ud800-\udbff])[\udc00-\udfff]/g;

function wellFormed(_key, value) {
  return typeof value === "string" ? value.replace(LONE_SURROGATE, "\ufffd") : value;
}

function send(...events) {
  writeProtocol(events.map((event) => stringify(event, wellFormed) + "\n").join(""));
}

function outputEvent(kind) {
  const decoder = new util.TextDecoder("utf-8");
  return function write(chunk, encoding, callback) {
    const text =
      typeof chunk === "string"
        ? chunk
        : decoder.decode(Buffer.from(chunk, typeof encoding === "string" ? encoding : undefined), {
            stream: true,
          });
    if (text) {
      // Microseconds, as interpreter.py writes them (a Date has milliseconds only).
      send({ type: kind, text, timestamp: new Date().toISOString().replace("Z", "000Z") });
    }
    const done = typeof encoding === "function" ? encoding : callback;
    if (typeof done === "function") {
      process.nextTick(done);
    }
    return true;
  };
}

// Why the cell was interrupted, for the await in progress (null between cells).
let interruptAwait = null;

function parseRequest(line) {
  let request;
  try {
    request = JSON.parse(line);
  } catch (error) {
    throw new TypeError(`a request is one JSON object per line: ${error.message}`);
  }
  if (request === null || typeof request !== "object" || Array.isArray(request)) {
    throw new TypeError("a request is a JSON object");
  }
  if (typeof request.code !== "string") {
    throw new TypeError('"code" must be a string');
  }
  const envVars = request.env_vars ?? {};
  if (
    typeof envVars !== "object" ||
    Array.isArray(envVars) ||
    !Object.values(envVars).every((value) => typeof value === "string")
  ) {
    throw new TypeError('"env_vars" must be an object of strings');
  }
  for (const [name, value] of Object.entries(envVars)) {
    if (name === "" || name.includes("=") || name.includes("\0") || value.includes("\0")) {
      throw new TypeError(`env_vars: ${stringify(name)} cannot be set`);
    }
  }
  return { code: request.code, envVars };
}

function setEnv(envVars) {
  const saved = new Map();
  for (const [name, value] of Object.entries(envVars)) {
    saved.set(name, Object.prototype.hasOwnProperty.call(process.env, name) ? process.env[name] : undefined);
    process.env[name] = value;
  }
  return saved;
}

function restoreEnv(saved) {
  for (const [name, value] of saved) {
    if (value === undefined) {
      delete process.env[name];
    } else {
      process.env[name] = value;
    }
  }
}

// A cell that uses `await` outside a function runs inside an async function: a cell that is one
// expression (`await fetch(url)`) has that expression's value; any other such cell is the
// function's body, so its declarations are its own and its value is what it returns.
function compile(code, filename) {
  try {
    return new vm.Script(code, { filename });
  } catch (error) {
    if (error instanceof SyntaxError && /\bawait\b/.test(code)) {
      for (const wrapped of [`(async () => (\n${code}\n))()`, `(async () => {\n${code}\n})()`]) {
        try {
          return new vm.Script(wrapped, { filename, lineOffset: -1 });
        } catch {
          // The cell's own syntax error is the one to report.
        }
      }
    }
    throw error;
  }
}

function isThenable(value) {
  return value !== null && (typeof value === "object" || typeof value === "function") && typeof value.then === "function";
}

async function runCell(code, filename) {
  const script = compile(code, filename);
  let value = script.runInThisContext({ breakOnSigint: true, displayErrors: false });
  if (isThenable(value)) {
    const interrupted = new Promise((_, reject) => {
      interruptAwait = () => reject(interruptError());
    });
    try {
      value = await Promise.race([value, interrupted]);
    } finally {
      interruptAwait = null;
    }
  }
  return value;
}

function interruptError() {
  const error = new Error("the cell was interrupted");
  error.name = "KeyboardInterrupt";
  return error;
}

// The cell's own frames only: none of this program's ("[eval]") or node's internals.
function errorEvent(error) {
  if (!(error instanceof Error)) {
    return { type: "error", name: "Error", value: safeString(error), traceback: `Uncaught ${safeInspect(error)}` };
  }
  if (error.code === "ERR_SCRIPT_EXECUTION_INTERRUPTED") {
    error = interruptError();
  }
  const stack = String(error.stack ?? `${error.name}: ${error.message}`)
    .split("\n")
    .filter((line) => !/^\s+at .*(\[eval\]|node:internal|\(node:)/.test(line))
    .join("\n");
  return { type: "error", name: safeString(error.name), value: safeString(error.message), traceback: stack };
}

function safeString(value) {
  try {
    return String(value);
  } catch {
    return "<unprintable value>";
  }
}

function safeInspect(value) {
  try {
    return util.inspect(value);
  } catch {
    return "<uninspectable value>";
  }
}

let executions = 0;

async function handle(line) {
  let request;
  try {
    request = parseRequest(line);
  } catch (error) {
    send(
      { type: "error", name: "InvalidRequest", value: error.message, traceback: `InvalidRequest: ${error.message}` },
      { type: "end_of_execution" },
    );
    return;
  }
  executions += 1;
  const saved = setEnv(request.envVars);
  const events = [];
  try {
    const value = await runCell(request.code, `<cell ${executions}>`);
    if (value !== undefined) {
      events.push({ type: "result", text: safeInspect(value), is_main_result: true });
    }
  } catch (error) {
    events.push(errorEvent(error));
  } finally {
    restoreEnv(saved);
  }
  send({ type: "number_of_executions", execution_count: executions }, ...events, { type: "end_of_execution" });
}

function main() {
  process.stdout.write = outputEvent("stdout");
  process.stderr.write = outputEvent("stderr");
  // Like a REPL started in the cwd: require() finds the cwd's modules and node_modules.
  globalThis.require = Module.createRequire(path.join(process.cwd(), "[cell]"));
  process.on("SIGINT", () => {
    if (interruptAwait !== null) {
      interruptAwait();
    }
  });
  // A promise a cell left unawaited that rejects is the cell's business, not the context's end.
  process.on("unhandledRejection", (reason) => {
    process.stderr.write(`Unhandled promise rejection: ${safeInspect(reason)}\n`);
  });
  process.on("uncaughtException", (error) => {
    process.stderr.write(`Uncaught exception: ${safeInspect(error)}\n`);
  });
  send({ type: "ready" });
  const lines = readline.createInterface({ input: process.stdin, crlfDelay: Infinity });
  let queue = Promise.resolve();
  lines.on("line", (line) => {
    queue = queue.then(() => handle(line));
  });
  // The host has closed stdin: end once the requests already read are answered.
  lines.on("close", () => {
    queue.then(() => process.exit(0));
  });
}

main();
