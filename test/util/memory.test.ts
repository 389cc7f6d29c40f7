import { test } from 'node:test';
import assert from 'node:assert/strict';
import { trimHeap } from '../../src/util/memory.js';

const MB = 1024 * 1024;
const external = () => process.memoryUsage().arrayBuffers;
const settle = () => new Promise((resolve) => setTimeout(resolve, 50)); // freed buffers are swept in the background

/** Allocates `mb` 1 MB buffers and lets go of them; returns external memory while they were held. */
function churn(mb: number): number {
  const held = Array.from({ length: mb }, () => Buffer.alloc(MB, 1));
  return external() + held.length * 0;
}

test('trimHeap frees dropped buffers once memory outside the heap has grown, though the heap has not', async () => {
  trimHeap(); // the baseline (it may collect what earlier tests left)
  await settle();
  const withBuffers = churn(24);
  trimHeap();
  await settle();
  const after = external();
  assert.ok(withBuffers - after >= 20 * MB, `external memory ${(withBuffers / MB).toFixed(0)} MB -> ${(after / MB).toFixed(0)} MB`);
});

test('trimHeap does not collect for a small growth outside the heap', async () => {
  trimHeap();
  await settle();
  const withBuffers = churn(4);
  trimHeap();
  await settle();
  const after = external();
  assert.ok(withBuffers - after < 2 * MB, `collected although only 4 MB were added (${(withBuffers / MB).toFixed(0)} -> ${(after / MB).toFixed(0)} MB)`);
});
