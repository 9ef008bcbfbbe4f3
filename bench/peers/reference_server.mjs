// The Durable Streams reference server (file-backed), for python -m bench.stream_peers.
import { DurableStreamTestServer } from "@durable-streams/server"

const server = new DurableStreamTestServer({
  port: Number(process.env.PORT),
  host: "127.0.0.1",
  dataDir: process.env.DATA_DIR,
})
await server.start()
process.on("SIGTERM", async () => {
  await server.stop()
  process.exit(0)
})
