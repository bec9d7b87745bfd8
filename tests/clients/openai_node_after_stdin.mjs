// openai_node.mjs, started early: waits for one line on stdin, then makes the same plain and
// streamed chat completions with the official `openai` npm package and prints the same report.
// Lets a test start the process, wait until a capture has attached to it, then let it talk.

import { createInterface } from 'node:readline';

const lines = createInterface({ input: process.stdin });
await new Promise((resolve) => lines.once('line', resolve));
lines.close();
process.stdin.destroy();
await import('./openai_node.mjs');
