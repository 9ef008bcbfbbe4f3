// The official Durable Streams server conformance suite against a running jobcast server.
// tests/test_durable_conformance.py starts `jobcast serve` and runs this file with
// DS_BASE_URL set to a stream path prefix the server's settings make public.
import { runConformanceTests } from "@durable-streams/server-conformance-tests";

const baseUrl = process.env.DS_BASE_URL;
if (!baseUrl) throw new Error("set DS_BASE_URL, e.g. http://127.0.0.1:8000/v1/stream/conformance");

runConformanceTests({
  baseUrl,
  longPollTimeoutMs: Number(process.env.DS_LONG_POLL_MS ?? "3000"),
});
