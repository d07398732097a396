// Drives ztee's E2B-compatible API with the official E2B JavaScript SDKs, unchanged. Run by
// tests/e2b_sdk.rs with E2B_API_URL, E2B_SANDBOX_URL, E2B_API_KEY and OTHER_TENANT_KEY set; prints
// one JSON line of the checks that passed and exits non-zero at the first that fails.
import { Sandbox, CommandExitError } from 'e2b'
import { Sandbox as CodeSandbox } from '@e2b/code-interpreter'

const PAN = '4111' + '1111'.repeat(3)
const passed = []
function check(name, condition, detail = '') {
  if (!condition) throw new Error(`${name}: ${detail}`)
  passed.push(name)
}

const sbx = await CodeSandbox.create({ timeoutMs: 300_000 })

const seen = []
let r = await sbx.commands.run('echo hello; echo oops >&2', { onStdout: (d) => seen.push(d) })
check('foreground', r.stdout === 'hello\n' && r.stderr === 'oops\n' && r.exitCode === 0, JSON.stringify(r))
check('streamed callback', seen.join('') === 'hello\n', JSON.stringify(seen))
try {
  await sbx.commands.run('exit 3')
  check('non-zero exit', false, 'no error')
} catch (e) {
  check('non-zero exit', e instanceof CommandExitError && e.exitCode === 3, String(e))
}
r = await sbx.commands.run(`python3 -c "print('${PAN.slice(0, 8)}' + '${PAN.slice(8)}')"`)
check('PAN masked', !r.stdout.includes(PAN) && r.stdout.includes('1111'), r.stdout)

const h = await sbx.commands.run('sleep 60', { background: true })
const pids = (await sbx.commands.list()).map((p) => p.pid)
check('background listed', pids.includes(h.pid), JSON.stringify(pids))
check('kill', (await sbx.commands.kill(h.pid)) === true)

const cat = await sbx.commands.run('cat', { background: true, stdin: true })
await sbx.commands.sendStdin(cat.pid, 'hello stdin\n')
await sbx.commands.closeStdin(cat.pid)
r = await cat.wait()
check('stdin', r.stdout === 'hello stdin\n', JSON.stringify(r.stdout))

await sbx.files.write('/home/user/notes.txt', 'first line\n')
check('read', (await sbx.files.read('/home/user/notes.txt')) === 'first line\n')
check('list', (await sbx.files.list('/home/user')).some((e) => e.name === 'notes.txt'))
check('exists', (await sbx.files.exists('/home/user/notes.txt')) === true)
check('makeDir', (await sbx.files.makeDir('/home/user/data')) === true)
const info = await sbx.files.getInfo('/home/user/notes.txt')
check('getInfo', info.size === 11, JSON.stringify(info))
await sbx.files.remove('/home/user/notes.txt')
check('remove', (await sbx.files.exists('/home/user/notes.txt')) === false)

// watchDir streams the changes (filesystem.Filesystem/WatchDir); a card number in a file name
// arrives masked.
const changes = []
const watch = await sbx.files.watchDir('/home/user/data', (e) => changes.push(e))
await sbx.files.write('/home/user/data/new.txt', 'x')
await sbx.commands.run(`touch /home/user/data/card-${PAN.slice(0, 8)}$(echo ${PAN.slice(8)})`)
for (let i = 0; i < 100 && changes.filter((e) => e.type === 'create').length < 2; i++) {
  await new Promise((resolve) => setTimeout(resolve, 100))
}
await watch.stop()
const created = changes.filter((e) => e.type === 'create').map((e) => e.name)
check(
  'watchDir',
  created.includes('new.txt') && created.some((n) => n.startsWith('card-') && !n.includes(PAN)),
  JSON.stringify(changes),
)

await sbx.runCode('x = 41')
const ex = await sbx.runCode('x + 1')
check('runCode keeps state', ex.text === '42', JSON.stringify(ex.results))
const err = await sbx.runCode('1/0')
check('runCode error', err.error && err.error.name === 'ZeroDivisionError', JSON.stringify(err.error))

await sbx.setTimeout(120_000)
const again = await Sandbox.connect(sbx.sandboxId)
check('connect', (await again.commands.run('echo again')).stdout === 'again\n')
const listed = await Sandbox.list().nextItems()
check('list sandboxes', listed.some((s) => s.sandboxId === sbx.sandboxId), JSON.stringify(listed))
try {
  await Sandbox.connect(sbx.sandboxId, { apiKey: process.env.OTHER_TENANT_KEY })
  check('other tenant', false, 'connected')
} catch (e) {
  check('other tenant', /not found/i.test(String(e)), String(e))
}
check('kill sandbox', (await Sandbox.kill(sbx.sandboxId)) === true)
console.log(JSON.stringify({ passed }))
