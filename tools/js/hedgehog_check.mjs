// The stock @audius/hedgehog client against a Coliving node's /identity/ routes:
// sign up, log in again from a new Hedgehog instance (nothing kept locally),
// then log in with a wrong password and check that it fails.
//
// Usage (from the repo root; Node >= 22, shipped by the `node` devDependency):
//   node_modules/.bin/node tools/js/hedgehog_check.mjs [--mode all|signup|login] \
//       [--show-key] [<base-url> <email> <password>]
// or give them as HEDGEHOG_BASE_URL, HEDGEHOG_EMAIL, HEDGEHOG_PASSWORD (the
// password in the environment stays out of the process list).
//
// --mode all (default) does the three steps; signup only the first; login
// only the second and third (an account made by another client).
// --show-key adds the wallet's private key to the signup and login lines, so
// that a test can look for it where it must not be (throwaway accounts only).
//
// stdout: one JSON line per step, then a last line:
//   {"step":"signup","address":"0x..."}
//   {"step":"login","address":"0x..."}
//   {"step":"wrong_password","failed":true,"error":"..."}
//   {"ok":true,"address":"0x..."}                 exit 0
//   {"ok":false,"error":"..."}                    exit 1
// Addresses are lowercase, as hedgehog's getAddressString() gives them.

import { parseArgs } from 'node:util'
import { Hedgehog } from '@audius/hedgehog'

let done = false
function finish (obj, code) {
  if (done) return
  done = true
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code))
}
function fail (err) {
  finish({ ok: false, error: String(err?.message ?? err) }, 1)
}
function say (obj) {
  process.stdout.write(JSON.stringify(obj) + '\n')
}

process.on('unhandledRejection', fail)
process.on('uncaughtException', fail)

// hedgehog keeps the entropy in a localStorage; each instance here gets an
// empty one of its own, so a log-in can only work through the server
function memoryStorage () {
  const items = new Map()
  return {
    getItem: async (key) => items.get(key) ?? null,
    setItem: async (key, value) => { items.set(key, String(value)) },
    removeItem: async (key) => { items.delete(key) }
  }
}

async function call (base, method, path, body) {
  const response = await fetch(new URL(path, base), {
    method,
    headers: body === undefined ? {} : { 'content-type': 'application/json' },
    body: body === undefined ? undefined : JSON.stringify(body)
  })
  const text = await response.text()
  let answer = null
  try { answer = JSON.parse(text) } catch { answer = { error: text } }
  return { status: response.status, answer }
}

async function expectOk (base, method, path, body) {
  const { status, answer } = await call(base, method, path, body)
  if (status !== 200) throw new Error(`${method} ${path}: ${status} ${answer?.error ?? ''}`)
  return answer
}

// the three functions a hedgehog app supplies, over our /identity/ routes
function hedgehogFor (base, email) {
  const getFn = async ({ lookupKey }) => {
    const query = new URLSearchParams({ lookupKey, username: email })
    const { status, answer } = await call(base, 'GET', `/identity/authentication?${query}`)
    if (status === 404) return null // hedgehog then says "No account record for user"
    if (status !== 200) throw new Error(`GET /identity/authentication: ${status} ${answer?.error}`)
    return answer
  }
  const setAuthFn = (auth) => expectOk(base, 'POST', '/identity/authentication', auth)
  const setUserFn = (user) => expectOk(base, 'POST', '/identity/user', user)
  return new Hedgehog(getFn, setAuthFn, setUserFn, false, memoryStorage())
}

function walletLine (step, wallet, showKey) {
  const line = { step, address: wallet.getAddressString() }
  if (showKey) line.privateKey = wallet.getPrivateKeyString()
  return line
}

async function main () {
  const { values, positionals } = parseArgs({
    args: process.argv.slice(2),
    options: { mode: { type: 'string', default: 'all' }, 'show-key': { type: 'boolean' } },
    allowPositionals: true
  })
  const [base, email, password] = positionals.length === 3
    ? positionals
    : [process.env.HEDGEHOG_BASE_URL, process.env.HEDGEHOG_EMAIL, process.env.HEDGEHOG_PASSWORD]
  if (!base || !email || !password) {
    throw new Error('usage: hedgehog_check.mjs [--mode all|signup|login] [--show-key] <base-url> <email> <password>')
  }
  if (!['all', 'signup', 'login'].includes(values.mode)) throw new Error(`bad --mode ${values.mode}`)
  const showKey = values['show-key'] === true

  let address = null
  if (values.mode !== 'login') {
    const wallet = await hedgehogFor(base, email).signUp(email, password)
    address = wallet.getAddressString()
    say(walletLine('signup', wallet, showKey))
    if (values.mode === 'signup') return finish({ ok: true, address }, 0)
  }

  const wallet = await hedgehogFor(base, email).login(email, password)
  say(walletLine('login', wallet, showKey))
  if (address !== null && wallet.getAddressString() !== address) {
    throw new Error(`logged in to ${wallet.getAddressString()}, signed up as ${address}`)
  }
  address = wallet.getAddressString()

  try {
    const intruder = await hedgehogFor(base, email).login(email, password + ' (wrong)')
    throw new Error(`a wrong password logged in to ${intruder.getAddressString()}`)
  } catch (err) {
    if (String(err?.message).startsWith('a wrong password')) throw err
    say({ step: 'wrong_password', failed: true, error: String(err?.message ?? err) })
  }
  finish({ ok: true, address }, 0)
}

main().catch(fail)
