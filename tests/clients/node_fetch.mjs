// An ordinary app calling the OpenAI API with Node's built-in fetch (no SDK): one plain and one
// streamed chat completion, the SSE stream parsed by hand.
//
// Reads OPENAI_API_KEY (and OPENAI_BASE_URL if set) from the environment. Prints one JSON object on
// stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream",
// "id", "text", "finish_reason" and "usage" {"input_tokens", "output_tokens"}.

const baseUrl = process.env.OPENAI_BASE_URL ?? 'https://api.openai.com/v1';
const model = process.env.OPENAI_MODEL ?? 'gpt-4o-mini';
const apiKey = process.env.OPENAI_API_KEY;
if (!apiKey) throw new Error('OPENAI_API_KEY is not set');

async function chat(body) {
  const response = await fetch(`${baseUrl}/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}` },
    body: JSON.stringify({ model, ...body }),
    signal: AbortSignal.timeout(60_000),
  });
  if (!response.ok) throw new Error(`HTTP ${response.status}: ${await response.text()}`);
  return response;
}

const results = [];
const plain = await (await chat({ messages: [{ role: 'user', content: 'Say hello to the plain fetch.' }] })).json();
results.push({
  call: 'chat.completions',
  stream: false,
  id: plain.id,
  text: plain.choices[0].message.content,
  finish_reason: plain.choices[0].finish_reason,
  usage: { input_tokens: plain.usage.prompt_tokens, output_tokens: plain.usage.completion_tokens },
});

const streamed = await chat({
  messages: [{ role: 'user', content: 'Say hello to the streamed fetch.' }],
  stream: true,
  stream_options: { include_usage: true },
});
let buffer = '';
let text = '';
let usage = null;
let finish = null;
let id = null;
let chunks = 0;
let done = false;
const decoder = new TextDecoder();
for await (const bytes of streamed.body) {
  buffer += decoder.decode(bytes, { stream: true });
  let end;
  while ((end = buffer.indexOf('\n\n')) >= 0) {
    const event = buffer.slice(0, end);
    buffer = buffer.slice(end + 2);
    for (const line of event.split('\n')) {
      if (!line.startsWith('data: ')) continue;
      const data = line.slice('data: '.length);
      if (data === '[DONE]') {
        done = true;
        continue;
      }
      const chunk = JSON.parse(data);
      chunks += 1;
      id = chunk.id;
      if (chunk.usage) {
        usage = { input_tokens: chunk.usage.prompt_tokens, output_tokens: chunk.usage.completion_tokens };
      }
      for (const choice of chunk.choices) {
        if (choice.delta?.content) text += choice.delta.content;
        if (choice.finish_reason) finish = choice.finish_reason;
      }
    }
  }
}
if (!done) throw new Error('stream ended without data: [DONE]');
results.push({ call: 'chat.completions', stream: true, id, text, finish_reason: finish, chunks, usage });

console.log(JSON.stringify({ client: 'node_fetch.mjs', sdk: 'node-fetch', sdk_version: process.version, results }));
