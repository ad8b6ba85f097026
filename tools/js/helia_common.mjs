// Shared setup for the stock Helia test peers (helia_fetch.mjs, helia_serve.mjs).
// Run with Node >= 22: node_modules/.bin/node (npm package node@22).
//
// The node is composed like helia's createHelia() but WITHOUT withHTTP():
// createHeliaLight + withLibp2p + withBitswap. So there are no delegated
// routers, no trustless-gateway block broker, no HTTP at all. libp2p gets
// only TCP + Noise + Yamux + identify, no peer discovery (no bootstrap, no
// mDNS), no DHT/autoNAT/UPnP/relay, and a connection gater that refuses to
// dial anything that is not 127.0.0.1.

import { noise } from '@chainsafe/libp2p-noise'
import { yamux } from '@chainsafe/libp2p-yamux'
import { withBitswap } from '@helia/bitswap'
import { withLibp2p } from '@helia/libp2p'
import { identify } from '@libp2p/identify'
import { tcp } from '@libp2p/tcp'
import { createHeliaLight } from 'helia'

export function isLoopback (ma) {
  const first = ma.getComponents()[0]
  return first != null && first.name === 'ip4' && first.value === '127.0.0.1'
}

/**
 * @param {object} [opts]
 * @param {import('@libp2p/interface').PrivateKey} [opts.privateKey]
 * @param {string[]} [opts.listen]
 */
export async function createLocalHelia (opts = {}) {
  const helia = withBitswap(withLibp2p(createHeliaLight(), {
    privateKey: opts.privateKey,
    addresses: { listen: opts.listen ?? ['/ip4/127.0.0.1/tcp/0'] },
    transports: [tcp()],
    connectionEncrypters: [noise()],
    streamMuxers: [yamux()],
    peerDiscovery: [],
    services: { identify: identify() },
    connectionGater: {
      // refuse every outbound dial that is not to 127.0.0.1
      denyDialMultiaddr: async (ma) => !isLoopback(ma)
    }
  }))
  await helia.start()
  return helia
}

export function parseArgs (argv, flags) {
  const positional = []
  const values = {}
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]
    if (a.startsWith('--')) {
      const [name, inline] = a.slice(2).split('=', 2)
      if (!(name in flags)) throw new Error(`unknown option --${name}`)
      if (flags[name] === 'bool') values[name] = true
      else values[name] = inline ?? argv[++i]
    } else {
      positional.push(a)
    }
  }
  return { positional, values }
}
