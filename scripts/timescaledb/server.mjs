// PGlite with the TimescaleDB extension, served on a PostgreSQL socket (one connection at a time).
// usage: node server.mjs DATA_DIR PORT
import { PGlite } from '@electric-sql/pglite'
import { timescaledb } from '@electric-sql/pglite/timescaledb'
import { PGLiteSocketServer } from '@electric-sql/pglite-socket'
const [dataDir, port] = process.argv.slice(2)
const db = await PGlite.create(dataDir, { extensions: { timescaledb } })
await db.exec('CREATE EXTENSION IF NOT EXISTS timescaledb')
const server = new PGLiteSocketServer({ db, port: Number(port), host: '127.0.0.1' })
await server.start()
console.log(`pglite+timescaledb listening on 127.0.0.1:${port}`)
const stop = async () => { await server.stop(); await db.close(); process.exit(0) }
process.on('SIGTERM', stop); process.on('SIGINT', stop)
