// The page's logic: load an exported folder with transformers.js (ONNX Runtime Web's WebAssembly build, served
// from this folder's node_modules, never a CDN), read the chosen file at the model's rate, encode, decode, play.
// The last result is window.dacResult ({dims, codes, samples, seconds}); body[data-state] is loading, ready,
// running, done or error.
import { DacModel, env, Tensor } from './node_modules/@huggingface/transformers/dist/transformers.min.js';

const ort = new URL('./node_modules/onnxruntime-web/dist/', import.meta.url).href;
env.backends.onnx.wasm.wasmPaths = { mjs: `${ort}ort-wasm-simd-threaded.asyncify.mjs`,
                                     wasm: `${ort}ort-wasm-simd-threaded.asyncify.wasm` };
env.backends.onnx.wasm.numThreads = 1; // threads need a cross-origin isolated page
env.allowRemoteModels = false;
env.allowLocalModels = true;
env.useBrowserCache = false;

const folder = new URL(new URLSearchParams(location.search).get('model') ?? './model/', location.href);
env.localModelPath = new URL('..', folder).href;
const name = folder.pathname.split('/').filter(Boolean).pop();
const $ = (id) => document.getElementById(id);
const say = (state, text) => { document.body.dataset.state = state; $('status').textContent = text; };
const models = {};

async function model(dtype) {
  models[dtype] ??= DacModel.from_pretrained(name, { dtype, device: 'wasm' });
  return models[dtype];
}

/** Mono samples of `file` at `rate`: the browser decodes and resamples it. */
async function read(file, rate) {
  const context = new OfflineAudioContext(1, 1, rate);
  const decoded = await context.decodeAudioData(await file.arrayBuffer());
  const mono = new Float32Array(decoded.length);
  for (let c = 0; c < decoded.numberOfChannels; c++) {
    decoded.getChannelData(c).forEach((v, i) => { mono[i] += v / decoded.numberOfChannels; });
  }
  return mono;
}

/** A 32-bit float WAV of mono `samples`. */
function wav(samples, rate) {
  const view = new DataView(new ArrayBuffer(44 + 4 * samples.length));
  const text = (at, s) => [...s].forEach((ch, i) => view.setUint8(at + i, ch.charCodeAt(0)));
  text(0, 'RIFF'); view.setUint32(4, 36 + 4 * samples.length, true); text(8, 'WAVEfmt ');
  view.setUint32(16, 16, true); view.setUint16(20, 3, true); view.setUint16(22, 1, true);
  view.setUint32(24, rate, true); view.setUint32(28, 4 * rate, true); view.setUint16(32, 4, true);
  view.setUint16(34, 32, true); text(36, 'data'); view.setUint32(40, 4 * samples.length, true);
  samples.forEach((v, i) => view.setFloat32(44 + 4 * i, v, true));
  return new Blob([view], { type: 'audio/wav' });
}

async function run(file) {
  say('running', `Encoding ${file.name}…`);
  const config = await (await fetch(new URL('config.json', folder))).json();
  const rate = config.sampling_rate;
  const samples = await read(file, rate);
  $('input').src = URL.createObjectURL(wav(samples, rate));
  const dac = await model($('dtype').value);
  const start = performance.now();
  const input_values = new Tensor('float32', samples, [1, 1, samples.length]);
  const { audio_codes } = await dac.encode({ input_values });
  const { audio_values } = await dac.decode({ audio_codes });
  const seconds = (performance.now() - start) / 1000;
  $('output').src = URL.createObjectURL(wav(audio_values.data, rate));
  window.dacResult = { dims: audio_codes.dims, codes: Array.from(audio_codes.data, Number),
                       samples: audio_values.data.length, seconds };
  const [, books, frames] = audio_codes.dims;
  say('done', `${(samples.length / rate).toFixed(2)} s of audio → ${frames} frames × ${books} codebooks → ` +
              `${(audio_values.data.length / rate).toFixed(2)} s decoded, in ${seconds.toFixed(2)} s ` +
              `(${$('dtype').value}).`);
}

$('file').addEventListener('change', () => {
  const file = $('file').files[0];
  if (file) run(file).catch((error) => say('error', `Could not encode ${file.name}: ${error.message ?? error}`));
});
model('fp32').then(() => {
  $('file').disabled = false;
  say('ready', `Model ${folder.pathname} loaded. Choose an audio file.`);
}).catch((error) => say('error', `Could not load the model at ${folder.href}: ${error.message ?? error}`));
