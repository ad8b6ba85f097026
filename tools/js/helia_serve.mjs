// Stock Helia peer that serves one file over Bitswap on 127.0.0.1.
//
// Usage (from the repo root; needs Node >= 22, shipped by the `node` devDependency):
//   node_modules/.bin/node tools/js/helia_serve.mjs <file> [--key secp256k1|ed25519] [--helia-defaults]
//
// Prints one JSON line on stdout, then serves until SIGINT/SIGTERM:
//   {"multiaddr":"/ip4/127.0.0.1/tcp/P/p2p/ID","cid":"...","importer_cid":"...",
//    "cid_matches_importer":true,"bytes":N,"key":"secp256k1","chunking":"..."}
//
// By default the file is added with { cidVersion: 1, rawLeaves: true } AND the
// ipfs-unixfs-importer defaults (256 KiB chunks, 174 links per node), so the CID
// equals tools/js/cid_vectors.mjs / tests/vectors/unixfs_cids.json. NOTE:
// @helia/unixfs's own defaults are different (1 MiB chunks, 1024 links per node);
// pass --helia-defaults to add with those instead (then cid != importer_cid
// for files over 256 KiB).

import { readFile } from 'node:fs/promises'
import { unixfs } from '@helia/unixfs'
import { generateKeyPair } from '@libp2p/crypto/keys'
import { importer } from 'ipfs-unixfs-importer'
import { fixedSize } from 'ipfs-unixfs-importer/chunker'
import { balanced } from 'ipfs-unixfs-importer/layout'
import { createLocalHelia, parseArgs } from './helia_common.mjs'

const { positional, values } = parseArgs(process.argv.slice(2), { key: 'value', 'helia-defaults': 'bool' })
if (positional.length !== 1) {
  console.error('usage: helia_serve.mjs <file> [--key secp256k1|ed25519] [--helia-defaults]')
  process.exit(2)
}
const keyType = values.key ?? 'secp256k1'
if (keyType !== 'secp256k1' && keyType !== 'ed25519') {
  console.error('--key must be secp256k1 or ed25519')
  process.exit(2)
}

const data = await readFile(positional[0])
const privateKey = await generateKeyPair(keyType === 'secp256k1' ? 'secp256k1' : 'Ed25519')
const helia = await createLocalHelia({ privateKey, listen: ['/ip4/127.0.0.1/tcp/0'] })

const PART1_LAYOUT = {
  chunker: fixedSize({ chunkSize: 262144 }),
  layout: balanced({ maxChildrenPerNode: 174 })
}
const addOptions = values['helia-defaults'] === true
  ? { cidVersion: 1, rawLeaves: true }
  : { cidVersion: 1, rawLeaves: true, ...PART1_LAYOUT }
const cid = await unixfs(helia).addBytes(data, addOptions)

// reference: the bare importer with part 1's options (its defaults = 256 KiB / 174)
const nullStore = { put: async (c) => c }
let ref
for await (const e of importer([{ content: data }], nullStore, { cidVersion: 1, rawLeaves: true })) ref = e

const addr = helia.libp2p.getMultiaddrs().find(a => a.toString().startsWith('/ip4/127.0.0.1/tcp/'))
process.stdout.write(JSON.stringify({
  multiaddr: addr.toString(),
  cid: cid.toString(),
  importer_cid: ref.cid.toString(),
  cid_matches_importer: cid.equals(ref.cid),
  bytes: data.byteLength,
  key: keyType,
  chunking: values['helia-defaults'] === true ? '@helia/unixfs defaults (1 MiB chunks, 1024 links)' : 'importer defaults (256 KiB chunks, 174 links)'
}) + '\n')

let stopping = false
async function shutdown () {
  if (stopping) return
  stopping = true
  await Promise.race([helia.stop().catch(() => {}), new Promise(resolve => setTimeout(resolve, 2000))])
  process.exit(0)
}
process.on('SIGINT', shutdown)
process.on('SIGTERM', shutdown)
