// Headless Chromium plays a track in the gateway's web player, then seeks.
//
// Usage (from the repo root; Node >= 18, playwright-core from package.json):
//   node tools/js/player_check.mjs --chromium /usr/bin/chromium \
//       --user-data-dir DIR [--timeout-ms 60000] [--seek-fraction 0.85] PLAYER_URL
//
// Opens PLAYER_URL, clicks the first track's play button, waits (no fixed
// sleeps: page-side conditions with a deadline) until <audio>.currentTime
// advances, seeks to --seek-fraction of the duration, and waits until
// playback goes on from there.
//
// stdout: exactly one JSON line:
//   {"ok":true,"duration":D,"played_to":T1,"seek_target":S,"after_seek":T2,
//    "responses":[{"url":...,"status":206,"range":"bytes=0-"}, ...]}     exit 0
//   {"ok":false,"error":"...","stage":"...","responses":[...]}            exit 1

import { chromium } from 'playwright-core'

const responses = []
let stage = 'start'
let done = false
let context = null

async function finish (obj, code) {
  if (done) return
  done = true
  try {
    if (context) await context.close()
  } catch {}
  process.stdout.write(JSON.stringify({ ...obj, responses }) + '\n', () => process.exit(code))
}
function fail (err) {
  return finish({ ok: false, stage, error: String(err?.message ?? err) }, 1)
}
process.on('unhandledRejection', fail)
process.on('uncaughtException', fail)

function parseArgs (argv) {
  const values = {}
  const positional = []
  for (let i = 0; i < argv.length; i++) {
    if (argv[i].startsWith('--')) values[argv[i].slice(2)] = argv[++i]
    else positional.push(argv[i])
  }
  return { values, positional }
}

async function main () {
  const { values, positional } = parseArgs(process.argv.slice(2))
  if (positional.length !== 1 || !values.chromium || !values['user-data-dir']) {
    throw new Error('usage: player_check.mjs --chromium PATH --user-data-dir DIR [--timeout-ms N] URL')
  }
  const [url] = positional
  const timeout = Number(values['timeout-ms'] ?? 60000)
  const fraction = Number(values['seek-fraction'] ?? 0.85)
  setTimeout(() => fail(new Error(`overall deadline of ${timeout} ms passed`)), timeout).unref()

  stage = 'launch'
  context = await chromium.launchPersistentContext(values['user-data-dir'], {
    executablePath: values.chromium,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
      '--autoplay-policy=no-user-gesture-required'
    ],
    timeout
  })
  const page = context.pages()[0] ?? await context.newPage()
  page.setDefaultTimeout(timeout)
  page.on('response', (r) => {
    if (!r.url().includes('/ipfs/')) return
    responses.push({ url: r.url(), status: r.status(), range: r.request().headers().range ?? null })
  })

  stage = 'open player'
  await page.goto(url)
  await page.locator('#tracks li button.play').first().waitFor()

  stage = 'play'
  await page.locator('#tracks li button.play').first().click()
  await page.waitForFunction(() => {
    const a = document.getElementById('audio')
    return a.currentTime > 0.5 && !a.paused
  })
  const playedTo = await page.evaluate(() => document.getElementById('audio').currentTime)
  await page.waitForFunction((t) => document.getElementById('audio').currentTime > t + 0.25, playedTo)
  const duration = await page.evaluate(() => document.getElementById('audio').duration)

  stage = 'seek'
  const target = duration * fraction
  await page.evaluate((t) => { document.getElementById('audio').currentTime = t }, target)
  await page.waitForFunction((t) => {
    const a = document.getElementById('audio')
    return !a.seeking && a.currentTime > t + 0.25 && !a.paused
  }, target)
  const afterSeek = await page.evaluate(() => document.getElementById('audio').currentTime)

  stage = 'done'
  await finish({ ok: true, duration, played_to: playedTo, seek_target: target, after_seek: afterSeek }, 0)
}

main().catch(fail)
