// The official openai npm client reading streams that rbee migrates: a chat
// completion and a Responses API stream, each with max tokens N. After K
// tokens of each it prints "CUT <api>" and reads on while the test kills
// the hive serving it; at the end it prints the text it got and the usage
// as JSON lines ("TEXT <api> <json>"). Any error the client raises fails.
// Usage: node migrate.mjs BASE_URL MODEL N K
import OpenAI from "openai";

const [baseURL, model, n, k] = process.argv.slice(2);
const client = new OpenAI({ baseURL, apiKey: process.env.RBEE_API_KEY || "none", maxRetries: 0, timeout: 60000 });
const N = Number(n), K = Number(k);

try {
  const chat = await client.chat.completions.create({
    model,
    messages: [{ role: "user", content: "openai chat" }],
    max_tokens: N,
    stream: true,
    stream_options: { include_usage: true },
  });
  let text = "", tokens = 0, finish = null, usage = null, ids = new Set();
  for await (const chunk of chat) {
    ids.add(chunk.id);
    const d = chunk.choices[0]?.delta?.content ?? "";
    if (d) {
      text += d;
      if (++tokens === K) console.log("CUT chat");
    }
    finish = chunk.choices[0]?.finish_reason ?? finish;
    usage = chunk.usage ?? usage;
  }
  console.log("TEXT chat " + JSON.stringify({ text, finish, ids: [...ids], completion: usage?.completion_tokens }));

  const events = await client.responses.create({ model, input: "openai responses", max_output_tokens: N, stream: true });
  let deltas = "", final = null, types = [];
  tokens = 0;
  for await (const ev of events) {
    types.push(ev.type);
    if (ev.type === "response.output_text.delta") {
      deltas += ev.delta;
      if (++tokens === K) console.log("CUT responses");
    }
    if (ev.type === "response.completed" || ev.type === "response.incomplete") final = ev.response;
  }
  console.log("TEXT responses " + JSON.stringify({ text: deltas, final: final?.output?.[0]?.content?.[0]?.text, created: types.filter((t) => t === "response.created").length, completion: final?.usage?.output_tokens }));
} catch (err) {
  console.error(`FAIL: ${err?.stack ?? err}`);
  process.exit(1);
}
console.log("OK");
