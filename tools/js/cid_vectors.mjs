#!/usr/bin/env node
// Generate UnixFS CID test vectors with the reference JS importer.
//
// Usage (from the repo root):  node tools/js/cid_vectors.mjs [out.json]
// Default output: tests/vectors/unixfs_cids.json
//
// Importer options: { cidVersion: 1, rawLeaves: true } and otherwise the
// importer's defaults (fixed-size 262144-byte chunker, balanced layout with
// 174 max children, dag-pb "links-first" field order, reduceSingleLeafToSelf).
// File content of size n: byte i = i mod 251.

import { mkdir, readFile, writeFile } from 'node:fs/promises'
import { dirname, resolve } from 'node:path'
import { fileURLToPath } from 'node:url'
import * as dagPb from '@ipld/dag-pb'
import { UnixFS } from 'ipfs-unixfs'
import { importer } from 'ipfs-unixfs-importer'
import * as raw from 'multiformats/codecs/raw'

const here = dirname(fileURLToPath(import.meta.url))
const repoRoot = resolve(here, '..', '..')
const outPath = resolve(process.argv[2] ?? resolve(repoRoot, 'tests/vectors/unixfs_cids.json'))

const SIZES = [0, 1, 262144, 262145, 10485760, 47185920]
const ROOT_HEX_MAX = 10485760
const IMPORTER_OPTIONS = { cidVersion: 1, rawLeaves: true }
const GEN_CHUNK = 1 << 20 // generate content 1 MiB at a time

async function pkgVersion (name) {
  const p = resolve(repoRoot, 'node_modules', name, 'package.json')
  return JSON.parse(await readFile(p, 'utf8')).version
}

// A period-251 pattern long enough that any GEN_CHUNK window can be a view
// into it: window starting at offset o is pattern[o % 251 : o % 251 + len].
const PATTERN = new Uint8Array(GEN_CHUNK + 251)
for (let i = 0; i < PATTERN.length; i++) PATTERN[i] = i % 251

function * content (n) {
  for (let off = 0; off < n; off += GEN_CHUNK) {
    const len = Math.min(GEN_CHUNK, n - off)
    const s = off % 251
    yield PATTERN.subarray(s, s + len)
  }
}

function expectedByte (i) { return i % 251 }

class MemoryBlockstore {
  constructor () { this.blocks = new Map() }
  async put (cid, bytes) { this.blocks.set(cid.toString(), bytes); return cid }
  async get (cid) {
    const b = this.blocks.get(cid.toString())
    if (b == null) throw new Error(`block not found: ${cid}`)
    return b
  }

  async has (cid) { return this.blocks.has(cid.toString()) }
}

function toHex (u8) { return Buffer.from(u8.buffer, u8.byteOffset, u8.byteLength).toString('hex') }

// Walk the DAG in order: count leaves, compute depth, check the bytes.
async function walk (bs, cid) {
  let leaves = 0
  let firstLeaf = null
  let offset = 0
  async function visit (c, level) {
    const block = await bs.get(c)
    if (c.code === raw.code) {
      leaves++
      firstLeaf ??= c.toString()
      for (let j = 0; j < block.length; j++) {
        if (block[j] !== expectedByte(offset + j)) throw new Error(`content mismatch at ${offset + j}`)
      }
      offset += block.length
      return level
    }
    if (c.code !== dagPb.code) throw new Error(`unexpected codec ${c.code}`)
    const node = dagPb.decode(block)
    const fs = UnixFS.unmarshal(node.Data)
    if (fs.type !== 'file') throw new Error(`unexpected unixfs type ${fs.type}`)
    if (node.Links.length === 0) {
      // a dag-pb leaf with inline data (not expected with rawLeaves)
      leaves++
      firstLeaf ??= c.toString()
      offset += fs.data?.length ?? 0
      return level
    }
    let depth = level
    for (const link of node.Links) depth = Math.max(depth, await visit(link.Hash, level + 1))
    return depth
  }
  const depth = await visit(cid, 0)
  return { leaves, depth, firstLeaf, bytes: offset }
}

const version = await pkgVersion('ipfs-unixfs-importer')
const vectors = []
for (const size of SIZES) {
  const bs = new MemoryBlockstore()
  let result
  for await (const entry of importer([{ content: content(size) }], bs, { ...IMPORTER_OPTIONS })) {
    result = entry
  }
  const cid = result.cid
  const w = await walk(bs, cid)
  if (w.bytes !== size) throw new Error(`size ${size}: DAG holds ${w.bytes} bytes`)
  const v = {
    size,
    cid: cid.toString(),
    root_codec: cid.code === raw.code ? 'raw' : 'dag-pb',
    leaves: w.leaves,
    depth: w.depth,
    first_leaf_cid: w.firstLeaf
  }
  if (cid.code === dagPb.code) {
    const rootBlock = await bs.get(cid)
    v.root_links = dagPb.decode(rootBlock).Links.length
    v.root_block_len = rootBlock.length
    if (size <= ROOT_HEX_MAX) v.root_block_hex = toHex(rootBlock)
  }
  vectors.push(v)
  console.error(`size=${size} cid=${v.cid} codec=${v.root_codec} leaves=${v.leaves} depth=${v.depth}`)
}

const doc = {
  generator: `ipfs-unixfs-importer@${version} options ${JSON.stringify(IMPORTER_OPTIONS)} ` +
    '(defaults: fixed-size chunker 262144 bytes, balanced layout maxChildrenPerNode 174, ' +
    'dag-pb links-first, reduceSingleLeafToSelf true, sha2-256)',
  content: 'byte i = i mod 251',
  depth_meaning: '0 = root is the single raw leaf; 1 = root links to raw leaves; 2 = root -> intermediate dag-pb nodes -> raw leaves',
  vectors
}
await mkdir(dirname(outPath), { recursive: true })
await writeFile(outPath, JSON.stringify(doc, null, 2) + '\n')
console.error(`wrote ${outPath}`)
