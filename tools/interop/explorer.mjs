// Drives Debian's chromium through the explorer page of a running node, as
// an auditor would, and prints what it saw as one JSON object. Screenshots
// go to OUT_DIR. Used by tests/explorer.rs.
//
//   node explorer.mjs http://127.0.0.1:7480/ OUT_DIR ENTRY_INDEX AUDIT_ACCOUNT KEY_ID TASK_ID

import { chromium } from 'playwright-core'

const [url, out, index, account, key, task] = process.argv.slice(2)
if (!task) {
  console.error('usage: node explorer.mjs URL OUT_DIR ENTRY_INDEX AUDIT_ACCOUNT KEY_ID TASK_ID')
  process.exit(2)
}

const browser = await chromium.launch({
  executablePath: process.env.CHROMIUM ?? '/usr/bin/chromium',
  // The flags keep chromium from reaching for the network: only this
  // machine's addresses are reachable here.
  args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
    '--disable-background-networking', '--disable-component-update', '--disable-sync'],
})
const seen = {}
try {
  const page = await browser.newPage({ viewport: { width: 1200, height: 900 } })
  const errors = []
  page.on('pageerror', (e) => errors.push(e.message))

  // The entries page lists the newest entries.
  await page.goto(url)
  await page.waitForSelector('#entries tbody tr')
  seen.listed = await page.$$eval('#entries tbody tr', (rows) => rows.map((r) => Number(r.dataset.index)))
  seen.head = await page.textContent('#head h2')
  seen.head_signature = await page.getAttribute('#head-result', 'data-result')
  await page.screenshot({ path: `${out}/entries.png`, fullPage: true })

  // One entry: decoded, and its inclusion proof checked in the page.
  await page.goto(`${url}#/entry/${index}`)
  await page.waitForSelector('#proof-result')
  seen.proof = await page.getAttribute('#proof-result', 'data-result')
  seen.proof_text = await page.textContent('#proof-result')
  seen.decoded = await page.textContent('#decoded')
  await page.screenshot({ path: `${out}/entry.png`, fullPage: true })

  // The same entry with one hash of its proof altered on the way.
  await page.route('**/api/entries/*', async (route) => {
    const response = await route.fetch()
    const body = await response.json()
    const h = body.proof.path[0]
    body.proof.path[0] = (h[0] === '0' ? '1' : '0') + h.slice(1)
    await route.fulfill({ response, json: body })
  })
  await page.goto(`${url}#/entry/${index}?tampered`)
  await page.reload()
  await page.waitForSelector('#proof-result')
  seen.tampered = await page.getAttribute('#proof-result', 'data-result')
  seen.tampered_text = await page.textContent('#proof-result')
  await page.screenshot({ path: `${out}/tampered.png`, fullPage: true })
  await page.unroute('**/api/entries/*')

  // An account's page: the KMS audit entries that name it, found by search.
  await page.goto(url)
  await page.fill('#q', account)
  await page.press('#q', 'Enter')
  await page.waitForSelector('#entries tbody tr')
  seen.account_kinds = await page.$$eval('#entries tbody tr .kind', (k) => k.map((e) => e.textContent))
  await page.screenshot({ path: `${out}/account.png`, fullPage: true })

  // The key's audit trail: every operation on it.
  await page.goto(`${url}#/key/${account}/${encodeURIComponent(key)}`)
  await page.waitForSelector('#audit tbody tr')
  seen.key_operations = await page.$$eval('#audit tbody tr .kind', (k) => k.map((e) => e.textContent))
  await page.screenshot({ path: `${out}/key.png`, fullPage: true })

  // The task: its epsilon curve is drawn (pixels of the series' colour on
  // the canvas), and its agents are listed with contributions and rewards.
  await page.goto(`${url}#/task/${encodeURIComponent(task)}`)
  await page.waitForSelector('#epsilon-chart canvas')
  seen.curve_pixels = await page.$eval('#epsilon-chart canvas', (c) => {
    const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data
    let n = 0
    for (let i = 0; i < d.length; i += 4) {
      // #3056d3, the epsilon series' stroke, give or take antialiasing.
      if (Math.abs(d[i] - 0x30) < 24 && Math.abs(d[i + 1] - 0x56) < 24 && Math.abs(d[i + 2] - 0xd3) < 24 && d[i + 3] > 200) n++
    }
    return n
  })
  seen.task_agents = await page.$$eval('#agents tbody tr', (rows) => rows.map((r) => [...r.children].map((c) => c.textContent)))
  await page.screenshot({ path: `${out}/task.png`, fullPage: true })

  // A bad search answers with the server's reason, not a blank page.
  await page.goto(`${url}#/search/${'9'.repeat(30)}`)
  await page.waitForSelector('#error')
  seen.bad_search = await page.textContent('#error')

  seen.page_errors = errors
} finally {
  await browser.close()
}
console.log(JSON.stringify(seen))
