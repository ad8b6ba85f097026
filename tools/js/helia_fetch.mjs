// Stock Helia peer: dial one multiaddr, fetch a UnixFS file by CID over
// Bitswap from that peer, write it to a file.
//
// Usage (from the repo root; needs Node >= 22, shipped by the `node` devDependency):
//   node_modules/.bin/node tools/js/helia_fetch.mjs [--timeout-ms 60000] \
//       /ip4/127.0.0.1/tcp/PORT/p2p/PEERID <cid> <out-file>
//
// stdout: exactly one JSON line:
//   {"ok":true,"bytes":N,"ms":T,"dial_ms":D,"peer":"..."}   exit 0
//   {"ok":false,"error":"..."}                                exit 1
// "ms" is wall time from the start of the dial to the last byte written.

import { once } from 'node:events'
import { createWriteStream } from 'node:fs'
import { unixfs } from '@helia/unixfs'
import { multiaddr } from '@multiformats/multiaddr'
import { CID } from 'multiformats/cid'
import { createLocalHelia, isLoopback, parseArgs } from './helia_common.mjs'

let done = false
function finish (obj, code) {
  if (done) return
  done = true
  process.stdout.write(JSON.stringify(obj) + '\n', () => process.exit(code))
}
function fail (err) {
  finish({ ok: false, error: String(err?.message ?? err) }, 1)
}

process.on('unhandledRejection', fail)
process.on('uncaughtException', fail)

async function main () {
  const { positional, values } = parseArgs(process.argv.slice(2), { 'timeout-ms': 'value' })
  if (positional.length !== 3) {
    throw new Error('usage: helia_fetch.mjs [--timeout-ms N] <multiaddr-with-/p2p/peerid> <cid> <out-file>')
  }
  const [addrStr, cidStr, outPath] = positional
  const timeoutMs = Number(values['timeout-ms'] ?? 60000)
  if (!Number.isFinite(timeoutMs) || timeoutMs <= 0) throw new Error('bad --timeout-ms')

  // hard stop even if something ignores the abort signal
  setTimeout(() => fail(new Error(`timeout after ${timeoutMs} ms`)), timeoutMs).unref()
  const signal = AbortSignal.timeout(timeoutMs)

  const ma = multiaddr(addrStr)
  if (!isLoopback(ma)) throw new Error('refusing to dial a non-127.0.0.1 address')
  if (ma.getComponents().find(c => c.name === 'p2p') == null) throw new Error('multiaddr must end in /p2p/<peer-id>')
  const cid = CID.parse(cidStr)

  const helia = await createLocalHelia()
  try {
    const t0 = performance.now()
    const conn = await helia.libp2p.dial(ma, { signal })
    const dialMs = performance.now() - t0

    const fs = unixfs(helia)
    const out = createWriteStream(outPath)
    let bytes = 0
    for await (const chunk of fs.cat(cid, { signal })) {
      bytes += chunk.byteLength
      if (!out.write(chunk)) await once(out, 'drain')
    }
    out.end()
    await once(out, 'finish')
    const ms = performance.now() - t0
    await helia.stop().catch(() => {})
    finish({
      ok: true,
      bytes,
      ms: Math.round(ms),
      dial_ms: Math.round(dialMs),
      peer: conn.remotePeer.toString()
    }, 0)
  } catch (err) {
    await Promise.race([helia.stop().catch(() => {}), new Promise(resolve => setTimeout(resolve, 1000))])
    throw err
  }
}

main().catch(fail)
