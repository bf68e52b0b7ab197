// Run a converted (portable) model with onnxruntime-node or onnxruntime-web (WASM) from Node.
//   node run.mjs node|web MODEL.onnx INPUT_NAME INPUT.f32 DIMS_JSON OUTPUT_NAME OUT.f32 [REPEATS]
// INPUT.f32 / OUT.f32 are raw little-endian float32; prints {"dims": [...], "ms": best run time}.
import { readFileSync, writeFileSync } from 'node:fs';

const [backend, model, inputName, inputFile, dimsJson, outputName, outFile, repeats = '1'] = process.argv.slice(2);
const ort = backend === 'web' ? await import('onnxruntime-web') : await import('onnxruntime-node');
if (backend === 'web') ort.env.wasm.numThreads = 1;
const raw = readFileSync(inputFile);
const data = new Float32Array(raw.buffer, raw.byteOffset, raw.byteLength / 4);
const input = new ort.Tensor('float32', data, JSON.parse(dimsJson));
const session = await ort.InferenceSession.create(backend === 'web' ? readFileSync(model) : model);
let best = Infinity;
let result;
for (let i = 0; i < Number(repeats); i++) {
  const start = performance.now();
  result = await session.run({ [inputName]: input });
  best = Math.min(best, performance.now() - start);
}
const out = result[outputName];
writeFileSync(outFile, Buffer.from(out.data.buffer, out.data.byteOffset, out.data.byteLength));
console.log(JSON.stringify({ dims: out.dims, ms: best }));
