// The explorer page. Everything the server says about an entry is checked
// here before it is called verified: the inclusion proof (RFC 9162 §2.1.3.2)
// with WebCrypto SHA-256, and the head's ed25519 signature with WebCrypto.
// Data reaches the page only through textContent, never as markup.

const HEAD_CONTEXT = new TextEncoder().encode('yilian/ledger/tree-head/v1\0');

function el(tag, attrs = {}, ...children) {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  for (const c of children) e.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return e;
}

function hexToBytes(hex) {
  if (hex.length % 2 || /[^0-9a-f]/i.test(hex)) throw new Error(`not hex: ${hex.slice(0, 16)}`);
  const out = new Uint8Array(hex.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(hex.substr(2 * i, 2), 16);
  return out;
}

const bytesToHex = (b) => Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');

function concat(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) { out.set(p, at); at += p.length; }
  return out;
}

async function sha256(bytes) {
  return new Uint8Array(await crypto.subtle.digest('SHA-256', bytes));
}

const leafHash = (entry) => sha256(concat(new Uint8Array([0]), entry));
const nodeHash = (l, r) => sha256(concat(new Uint8Array([1]), l, r));

function u64be(n) {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, BigInt(n));
  return b;
}

// RFC 9162 §2.1.3.2. Returns null when the proof holds, else the reason.
export async function checkInclusion(index, size, entry, path, root) {
  let fn = BigInt(index);
  let sn = BigInt(size) - 1n;
  if (fn > sn) return `index ${index} is not below the tree size ${size}`;
  let r = await leafHash(entry);
  for (const p of path) {
    if (sn === 0n) return 'the path is longer than the tree is deep';
    if ((fn & 1n) === 1n || fn === sn) {
      r = await nodeHash(p, r);
      if ((fn & 1n) === 0n) {
        while ((fn & 1n) === 0n && fn !== 0n) { fn >>= 1n; sn >>= 1n; }
      }
    } else {
      r = await nodeHash(r, p);
    }
    fn >>= 1n; sn >>= 1n;
  }
  if (sn !== 0n) return 'the path is shorter than the tree is deep';
  if (bytesToHex(r) !== bytesToHex(root)) return 'the path does not lead to the signed root';
  return null;
}

// The head's ed25519 signature over the bytes ledger/src/head.rs signs.
async function checkHead(h) {
  try {
    const key = await crypto.subtle.importKey('raw', hexToBytes(h.log_key), { name: 'Ed25519' }, false, ['verify']);
    const msg = concat(HEAD_CONTEXT, hexToBytes(h.log_key), u64be(h.size), hexToBytes(h.root), u64be(h.timestamp_ms));
    return (await crypto.subtle.verify('Ed25519', key, hexToBytes(h.signature), msg)) ? null : 'the signature does not verify';
  } catch (e) {
    return `the signature could not be checked: ${e.message}`;
  }
}

async function api(path) {
  const r = await fetch(path);
  const body = await r.json();
  if (!r.ok) throw new Error(body.error || `${r.status}`);
  return body;
}

function verdict(id, failure, okText) {
  const ok = failure === null;
  return el('p', { id, class: ok ? 'ok' : 'failed', 'data-result': ok ? 'ok' : 'failed' },
    ok ? `✓ ${okText}` : `✗ FAILED: ${failure}`);
}

const when = (ms) => new Date(Number(ms)).toISOString().replace('T', ' ').replace(/\.\d+Z$/, ' UTC');
const short = (hex) => `${hex.slice(0, 12)}…`;

function entryTable(rows) {
  const body = el('tbody');
  for (const e of rows) {
    body.append(el('tr', { 'data-index': e.index },
      el('td', {}, el('a', { href: `#/entry/${e.index}` }, e.index)),
      el('td', {}, el('span', { class: 'kind' }, e.kind)),
      el('td', {}, el('a', { href: `#/account/${e.signer}`, class: 'hex' }, short(e.signer))),
      el('td', {}, when(e.timestamp_ms))));
  }
  return el('table', { id: 'entries' },
    el('thead', {}, el('tr', {}, el('th', {}, 'index'), el('th', {}, 'kind'), el('th', {}, 'signer'), el('th', {}, 'time'))),
    body);
}

async function showHead() {
  const h = await api('/api/head');
  const failure = await checkHead(h);
  const box = document.getElementById('head');
  box.replaceChildren(
    el('h2', {}, `Tree head: ${h.size} entries`),
    el('p', {}, 'root ', el('code', {}, h.root), ' · signed by ', el('code', {}, short(h.log_key)), ` · ${when(h.timestamp_ms)}`),
    verdict('head-result', failure, 'the head is signed by the member that served it'),
    h.cosigned
      ? el('details', {}, el('summary', {}, `Cosigned checkpoint (${h.cosigners.length} cosigners)`), el('pre', { id: 'cosigned' }, h.cosigned))
      : el('p', {}, 'No cosigned checkpoint yet.'));
}

async function showEntries(before) {
  const page = await api(before === undefined ? '/api/entries' : `/api/entries?before=${before}`);
  const pager = el('div', { class: 'pager' });
  if (page.to < page.size) pager.append(el('a', { href: `#/page/${Math.min(page.size, page.to + 25)}` }, '← newer'));
  if (page.from > 0) pager.append(el('a', { href: `#/page/${page.from}` }, 'older →'));
  return [el('h2', {}, `Entries ${page.from} to ${page.to - 1}`), entryTable(page.entries), pager];
}

async function showEntry(index) {
  const e = await api(`/api/entries/${index}`);
  const path = e.proof.path.map(hexToBytes);
  const failure = await checkInclusion(e.index, e.head.size, hexToBytes(e.leaf), path, hexToBytes(e.head.root));
  const headFailure = await checkHead(e.head);
  return [
    el('h2', {}, `Entry ${e.index} `, el('span', { class: 'kind' }, e.kind)),
    verdict('proof-result', failure ?? headFailure,
      `included in the signed head of ${e.head.size} entries (checked in this page)`),
    el('p', {}, 'signer ', el('a', { href: `#/account/${e.transaction.signer}`, class: 'hex' }, e.transaction.signer)),
    related(e.transaction),
    el('pre', { id: 'decoded' }, JSON.stringify(e.transaction.tx, null, 2)),
    el('details', {}, el('summary', {}, `Inclusion proof: ${path.length} hashes`),
      el('pre', { id: 'proof' }, e.proof.path.join('\n'))),
  ];
}

async function showAccount(account, from) {
  const a = await api(`/api/accounts/${account}${from ? `?from=${encodeURIComponent(from)}` : ''}`);
  const who = a.member ? `${a.member.org}/${a.member.name} (${a.member.role})${a.member.revoked ? ', revoked' : ''}` : 'not admitted';
  return [
    el('h2', {}, 'Account ', el('code', {}, a.account)),
    el('p', { id: 'balance' }, `${who} · balance ${a.balance}`),
    entryTable(a.entries),
    more(a.next, (n) => `#/account/${account}/${n}`),
  ];
}

// A link to the next page of an indexed list, when there is one.
function more(next, hash) {
  return next == null ? '' : el('p', {}, el('a', { href: hash(next), id: 'more' }, 'more'));
}

async function showSearch(q, from) {
  const at = from ? `&from=${encodeURIComponent(from)}` : '';
  const r = await api(`/api/search?q=${encodeURIComponent(q)}${at}`);
  if (r.found === 'index' && r.entries.length === 1) {
    location.hash = `#/entry/${r.entries[0].index}`;
    return [];
  }
  return [el('h2', {}, `Search: ${q}`), entryTable(r.entries),
    more(r.next, (n) => `#/search/${encodeURIComponent(q)}/${n}`)];
}

// One uPlot line chart per series set, rounds on the x axis.
function chart(id, title, rounds, series) {
  const box = el('div', { id, class: 'chart' })
  const data = [rounds, ...series.map((s) => s.values)]
  // Fixed size, so uPlot draws into the box before it is in the page.
  new uPlot({
    title, width: 900, height: 260,
    scales: { x: { time: false } },
    axes: [{ label: 'round', incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000] }, {}],
    series: [{ label: 'round' }, ...series.map((s) => ({ label: s.label, stroke: s.stroke, width: 2, points: { size: 6 } }))],
  }, data, box)
  return box
}

async function showTask(id) {
  const t = await api(`/api/tasks/${encodeURIComponent(id)}`)
  const parts = [el('h2', {}, `Task ${t.task_id}`)]
  if (t.submitted) {
    parts.push(el('p', {}, 'submitted in ', el('a', { href: `#/entry/${t.submitted.index}` }, `entry ${t.submitted.index}`),
      ` · reward budget ${t.submitted.reward_budget}`))
  }
  if (t.rounds && t.rounds.length) {
    const r = t.rounds.map((x) => x.round)
    parts.push(chart('accuracy-chart', 'Accuracy and loss on the validation set (this node coordinates the task)', r, [
      { label: 'accuracy', stroke: '#0a7d38', values: t.rounds.map((x) => x.accuracy) },
      { label: 'loss', stroke: '#b3261e', values: t.rounds.map((x) => x.loss) },
    ]))
  } else {
    parts.push(el('p', {}, 'Accuracy and loss are kept by the coordinating node, not on the ledger; this node does not coordinate the task.'))
  }
  if (t.epsilon.length) {
    parts.push(chart('epsilon-chart', 'Privacy spent (ε, as recorded on the ledger)', t.epsilon.map((x) => x.round), [
      { label: 'ε', stroke: '#3056d3', values: t.epsilon.map((x) => x.epsilon) },
    ]))
  }
  const byAgent = new Map()
  for (const c of t.contributions) {
    const a = byAgent.get(c.agent) ?? { score: 0, reward: 0, rounds: 0 }
    a.score += c.score; a.rounds += 1
    byAgent.set(c.agent, a)
  }
  for (const w of t.rewards) {
    const a = byAgent.get(w.account) ?? { score: 0, reward: 0, rounds: 0 }
    a.reward += Number(w.amount)
    byAgent.set(w.account, a)
  }
  const body = el('tbody')
  for (const [agent, a] of byAgent) {
    body.append(el('tr', { 'data-agent': agent },
      el('td', {}, el('a', { href: `#/account/${agent}`, class: 'hex' }, short(agent))),
      el('td', {}, a.rounds), el('td', {}, a.score.toFixed(4)), el('td', {}, a.reward)))
  }
  parts.push(el('h3', {}, 'Agents'), el('table', { id: 'agents' },
    el('thead', {}, el('tr', {}, el('th', {}, 'agent'), el('th', {}, 'rounds'), el('th', {}, 'contribution (sum)'), el('th', {}, 'reward'))),
    body))
  return parts
}

async function showKey(owner, key) {
  const k = await api(`/api/keys/${owner}/${encodeURIComponent(key)}`)
  const body = el('tbody')
  for (const o of k.operations) {
    body.append(el('tr', { 'data-index': o.index },
      el('td', {}, el('a', { href: `#/entry/${o.index}` }, o.index)),
      el('td', {}, el('span', { class: 'kind' }, o.operation)),
      el('td', {}, el('a', { href: `#/account/${o.actor}`, class: 'hex' }, short(o.actor))),
      el('td', {}, o.key_version ?? ''), el('td', {}, o.grant_id ?? ''), el('td', {}, o.outcome),
      el('td', {}, when(o.timestamp_ms))))
  }
  return [
    el('h2', {}, `Key ${k.key_id}`),
    el('p', {}, 'owner ', el('a', { href: `#/account/${k.owner}`, class: 'hex' }, k.owner)),
    el('table', { id: 'audit' },
      el('thead', {}, el('tr', {}, ...['index', 'operation', 'actor', 'version', 'grant', 'outcome', 'time'].map((h) => el('th', {}, h)))),
      body),
  ]
}

async function showZk(from) {
  const z = await api(`/api/zk?limit=100${from ? `&from=${encodeURIComponent(from)}` : ''}`)
  const body = el('tbody')
  for (const q of z.queries) {
    body.append(el('tr', { 'data-index': q.index },
      el('td', {}, el('a', { href: `#/entry/${q.index}` }, q.index)),
      el('td', {}, el('a', { href: `#/account/${q.verifier}`, class: 'hex' }, short(q.verifier))),
      el('td', {}, q.record_id), el('td', { class: 'hex' }, short(q.predicates_hash)),
      el('td', {}, q.outcome), el('td', {}, when(q.timestamp_ms))))
  }
  return [el('h2', {}, 'ZK verifications'), el('table', { id: 'zk' },
    el('thead', {}, el('tr', {}, ...['index', 'verifier', 'record', 'predicates', 'outcome', 'time'].map((h) => el('th', {}, h)))),
    body), more(z.next, (n) => `#/zk/${n}`)]
}

// Links from an entry to the pages about what it names.
function related(tx) {
  const [[kind, p]] = Object.entries(tx.tx.payload)
  const links = []
  if (p && p.task_id) links.push(el('a', { href: `#/task/${encodeURIComponent(p.task_id)}`, id: 'task-link' }, `task ${p.task_id}`))
  const keyLink = (r) => el('a', { href: `#/key/${r.owner}/${encodeURIComponent(r.key_id)}`, class: 'key-link' }, `audit trail of key ${r.key_id}`)
  if (kind === 'KeyAudit') links.push(keyLink(p))
  if (kind === 'KeyAudits') {
    const seen = new Set()
    for (const r of p.records) {
      if (!seen.has(r.owner + '/' + r.key_id)) { seen.add(r.owner + '/' + r.key_id); links.push(keyLink(r)) }
    }
  }
  return links.length ? el('p', {}, 'see ', ...links.flatMap((l, i) => (i ? [' · ', l] : [l]))) : ''
}

async function route() {
  const main = document.getElementById('main');
  const [, page, arg, arg2] = location.hash.split('/');
  try {
    await showHead();
    let content;
    if (page === 'entry') content = await showEntry(arg);
    else if (page === 'account') content = await showAccount(arg, arg2);
    else if (page === 'search') content = await showSearch(decodeURIComponent(arg ?? ''), arg2);
    else if (page === 'page') content = await showEntries(arg);
    else if (page === 'task') content = await showTask(decodeURIComponent(arg));
    else if (page === 'key') content = await showKey(arg, decodeURIComponent(arg2));
    else if (page === 'zk') content = await showZk(arg);
    else content = await showEntries();
    main.replaceChildren(...content);
  } catch (e) {
    main.replaceChildren(el('p', { class: 'failed', id: 'error' }, e.message));
  }
}

document.getElementById('search').addEventListener('submit', (ev) => {
  ev.preventDefault();
  const q = document.getElementById('q').value.trim();
  if (q) location.hash = `#/search/${encodeURIComponent(q)}`;
});
window.addEventListener('hashchange', route);
route();
