// Xen Orchestra's `xen-api` client against `abd sim serve`: it connects, sees
// the pool's objects through its event loop, and sees a change made later.
// Starts the simulator named by $ABD_BIN on a free port.
import { spawn } from 'node:child_process'
import { createInterface } from 'node:readline'
import assert from 'node:assert/strict'
import { createClient } from 'xen-api'

const scenario = new URL('../../scenarios/quickstart.toml', import.meta.url).pathname
const server = spawn(process.env.ABD_BIN, ['sim', 'serve', scenario, '--listen', '127.0.0.1:0', '--speed', '1000'], {
  stdio: ['ignore', 'pipe', 'inherit'],
})
const firstLine = await new Promise(resolve => createInterface({ input: server.stdout }).once('line', resolve))
const [, pool, , url] = firstLine.split(' ')
assert.equal(pool, 'lab')

async function until(what, predicate, timeoutMs = 10000) {
  const deadline = Date.now() + timeoutMs
  while (!predicate()) {
    assert.ok(Date.now() < deadline, `timed out waiting for ${what}`)
    await new Promise(resolve => setTimeout(resolve, 50))
  }
}

const xapi = createClient({ url, auth: { user: 'root', password: 'password' }, allowUnauthorized: true })
let failed = 0
try {
  await xapi.connect()
  const ofType = type => Object.values(xapi.objects.all).filter(o => o.$type === type)
  await until('the VMs', () => ofType('VM').length === 14)
  const names = ofType('VM').filter(vm => !vm.is_control_domain).map(vm => vm.name_label).sort()
  assert.deepEqual(names, Array.from({ length: 12 }, (_, i) => `vm-${String(i + 1).padStart(2, '0')}`))
  for (const type of ['pool', 'host', 'SR', 'PBD', 'network', 'PIF', 'VIF', 'VBD', 'VDI']) {
    await until(`${type} objects`, () => ofType(type).length > 0)
  }
  const vm = ofType('VM').find(o => o.name_label === 'vm-03')
  await xapi.call('VM.add_to_other_config', vm.$ref, 'seen-by', 'xo')
  await until('the change to come through event.from', () => xapi.getObjectByRef(vm.$ref).other_config['seen-by'] === 'xo')
  console.log(`xo-client: ok (${Object.keys(xapi.objects.all).length} objects, ${names.length} VMs, change seen)`)
} catch (error) {
  failed = 1
  console.error('xo-client: FAILED', error)
} finally {
  await xapi.disconnect().catch(() => {})
  server.kill()
}
console.log(`${1 - failed} passed, ${failed} failed`)
process.exit(failed)
