// An ordinary app using the official `openai` npm package: one plain and one streamed chat completion.
//
// Reads OPENAI_API_KEY (and OPENAI_BASE_URL if set) from the environment. Prints one JSON object on
// stdout: {"client", "sdk", "sdk_version", "results": [...]}, where each result has "call", "stream",
// "id", "text", "finish_reason" and "usage" {"input_tokens", "output_tokens"}.

import OpenAI from 'openai';
import { VERSION } from 'openai/version';

const model = process.env.OPENAI_MODEL ?? 'gpt-4o-mini';
const client = new OpenAI({ timeout: 60_000, maxRetries: 0 });
const results = [];

const messages = [
  { role: 'system', content: 'You are a terse assistant.' },
  { role: 'user', content: 'Say hello to the plain request from node.' },
];

const plain = await client.chat.completions.create({ model, messages });
results.push({
  call: 'chat.completions',
  stream: false,
  id: plain.id,
  text: plain.choices[0].message.content,
  finish_reason: plain.choices[0].finish_reason,
  usage: { input_tokens: plain.usage.prompt_tokens, output_tokens: plain.usage.completion_tokens },
});

messages[1] = { role: 'user', content: 'Say hello to the streamed request from node, word by word.' };
const stream = await client.chat.completions.create({
  model,
  messages,
  stream: true,
  stream_options: { include_usage: true },
});
let text = '';
let usage = null;
let finish = null;
let id = null;
let chunks = 0;
for await (const chunk of stream) {
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
results.push({ call: 'chat.completions', stream: true, id, text, finish_reason: finish, chunks, usage });

console.log(JSON.stringify({ client: 'openai_node.mjs', sdk: 'openai-node', sdk_version: VERSION, results }));
