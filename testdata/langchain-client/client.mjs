// LangChain.js against an rbee node whose workers are simulated: structured
// output (withStructuredOutput with a zod schema, by response_format's JSON
// schema and by a forced function call) and tool calls (bindTools), invoked
// and streamed, through chat completions and through the Responses API; and
// the end of an agent's loop: after a tool's result the model answers in
// text. zod parses every structured answer, so a document that does not
// match its schema fails here. Exits non-zero with the reason on any failure.
// Usage: node client.mjs BASE_URL MODEL
import { ChatOpenAI } from "@langchain/openai";
import { tool } from "@langchain/core/tools";
import { HumanMessage, ToolMessage } from "@langchain/core/messages";
import { z } from "zod";

const [baseURL, model] = process.argv.slice(2);
if (!baseURL || !model) {
  console.error("usage: node client.mjs http://127.0.0.1:7833/v1 MODEL");
  process.exit(2);
}

function check(cond, what) {
  if (!cond) throw new Error(what);
}

// A schema with what a simulated model must get right: nesting, an enum,
// integers within bounds, arrays with a minimum, an optional field, a
// nullable one, a format.
const Trip = z.object({
  destination: z.string().min(3).describe("where to"),
  nights: z.number().int().min(1).max(14),
  budget: z.number().positive(),
  transport: z.enum(["train", "plane", "bike"]),
  refundable: z.boolean(),
  travellers: z
    .array(z.object({ name: z.string(), age: z.number().int().min(0).max(120), email: z.email() }))
    .min(1),
  notes: z.string().nullable(),
  tags: z.array(z.string()).optional(),
});

const getWeather = tool(async ({ city, unit }) => `It is 21 degrees ${unit} in ${city}.`, {
  name: "get_weather",
  description: "The weather in a city now.",
  schema: z.object({ city: z.string(), unit: z.enum(["celsius", "fahrenheit"]), days: z.number().int().min(1).max(7) }),
});
const getTime = tool(async ({ zone }) => `12:00 in ${zone}`, {
  name: "get_time",
  description: "The time in a time zone.",
  schema: z.object({ zone: z.string() }),
});

function chatModel(api, streaming) {
  return new ChatOpenAI({
    model,
    apiKey: process.env.RBEE_API_KEY || "x",
    configuration: { baseURL },
    maxRetries: 0,
    streaming,
    useResponsesApi: api === "responses",
  });
}

// collect streams a runnable and concatenates its chunks.
async function collect(runnable, input) {
  let acc;
  let n = 0;
  for await (const chunk of await runnable.stream(input)) {
    acc = acc === undefined ? chunk : acc.concat ? acc.concat(chunk) : chunk;
    n++;
  }
  return [acc, n];
}

async function structured(api) {
  for (const method of ["jsonSchema", "functionCalling"]) {
    const llm = chatModel(api, false).withStructuredOutput(Trip, { name: "trip", method });
    const trip = await llm.invoke("Plan a trip to Lisbon for two.");
    Trip.parse(trip); // throws when it does not match
    check(trip.travellers.length >= 1, `${api} ${method}: no travellers`);
    console.log(`${api} withStructuredOutput(${method}) invoke: ${JSON.stringify(trip)}`);

    // LangChain's tool-call parser takes string content only, and its
    // Responses chunks carry content blocks: it cannot stream a forced
    // function call from the Responses API, whatever the server.
    if (api === "responses" && method === "functionCalling") continue;
    // Streamed, the parser yields partial objects; the last is the whole.
    let last;
    let parts = 0;
    for await (const partial of await chatModel(api, true).withStructuredOutput(Trip, { name: "trip", method }).stream("Plan a trip to Porto.")) {
      last = partial;
      parts++;
    }
    Trip.parse(last);
    console.log(`${api} withStructuredOutput(${method}) stream: ${parts} parts, ${JSON.stringify(last)}`);
  }
}

async function tools(api) {
  for (const streaming of [false, true]) {
    const how = streaming ? "stream" : "invoke";
    const llm = chatModel(api, streaming).bindTools([getWeather, getTime]);
    const question = new HumanMessage("What is the weather in Paris?");
    let msg;
    if (streaming) {
      let n;
      [msg, n] = await collect(llm, [question]);
      check(n > 2, `${api} bindTools stream: ${n} chunks, want the call in pieces`);
    } else {
      msg = await llm.invoke([question]);
    }
    check(msg.tool_calls?.length === 1, `${api} bindTools ${how}: tool_calls ${JSON.stringify(msg.tool_calls)}, want one`);
    const call = msg.tool_calls[0];
    check(call.name === "get_weather", `${api} bindTools ${how}: called ${call.name}, want the first tool`);
    check(typeof call.id === "string" && call.id.length > 0, `${api} bindTools ${how}: call without an id`);
    getWeather.schema.parse(call.args);
    console.log(`${api} bindTools ${how}: ${call.name}(${JSON.stringify(call.args)}) id ${call.id}`);

    // tool_choice names the second tool: it is the one called.
    const forced = chatModel(api, streaming).bindTools([getWeather, getTime], { tool_choice: "get_time" });
    const fmsg = streaming ? (await collect(forced, [question]))[0] : await forced.invoke([question]);
    check(fmsg.tool_calls?.[0]?.name === "get_time", `${api} tool_choice get_time ${how}: ${JSON.stringify(fmsg.tool_calls)}`);
    getTime.schema.parse(fmsg.tool_calls[0].args);

    // The agent's next turn: the tool's result is in, the answer is text.
    const result = await getWeather.invoke(call);
    check(result instanceof ToolMessage, `${api}: the tool did not make a ToolMessage`);
    const history = [question, msg, result];
    const reply = streaming ? (await collect(llm, history))[0] : await llm.invoke(history);
    check((reply.tool_calls ?? []).length === 0, `${api} after the tool's result ${how}: called again ${JSON.stringify(reply.tool_calls)}`);
    check(typeof reply.text === "string" && reply.text.length > 0, `${api} after the tool's result ${how}: no text`);
    console.log(`${api} after the tool's result ${how}: ${JSON.stringify(reply.text)}`);
  }
}

async function jsonMode() {
  // json_object: no schema, any object; the caller parses it.
  const msg = await chatModel("chat", false).invoke("Answer in JSON.", { response_format: { type: "json_object" } });
  const obj = JSON.parse(msg.text);
  check(obj !== null && typeof obj === "object" && !Array.isArray(obj), `json_object: ${msg.text} is not an object`);
  console.log(`chat json_object: ${msg.text}`);
}

try {
  for (const api of ["chat", "responses"]) {
    await structured(api);
    await tools(api);
  }
  await jsonMode();
} catch (err) {
  console.error(`FAIL: ${err?.stack ?? err}`);
  if (err?.error) console.error(`error body: ${JSON.stringify(err.error)}`);
  process.exit(1);
}
console.log("OK");
