// Encodes and decodes a WAV file with an exported DAC folder in Node (transformers.js over onnxruntime-node):
//
//   node dac.mjs MODEL_DIR input.wav OUTPUT_PREFIX
//
// writes OUTPUT_PREFIX.json (the codes of transformers.js' DacModel and of the step graphs, with their shapes) and
// OUTPUT_PREFIX.wav (the decoded audio) and OUTPUT_PREFIX.stream.wav (decoded by decoder_step.onnx). The WAV must
// be mono at the model's sampling rate. Everything loads from MODEL_DIR: no network.
import { readFileSync, writeFileSync } from 'node:fs';
import path from 'node:path';

import { DacModel, env, Tensor } from '@huggingface/transformers';
import * as ort from 'onnxruntime-node';
import wavefile from 'wavefile';

import { StepStream } from './stream.mjs';

const [folder, input, prefix] = process.argv.slice(2);
if (!prefix) {
  console.error('usage: node dac.mjs MODEL_DIR input.wav OUTPUT_PREFIX');
  process.exit(2);
}
const config = JSON.parse(readFileSync(path.join(folder, 'config.json'), 'utf8'));
const wav = new wavefile.WaveFile(readFileSync(input));
if (wav.fmt.numChannels !== 1 || wav.fmt.sampleRate !== config.sampling_rate) {
  console.error(`${input}: needs mono audio at ${config.sampling_rate} Hz, got ${wav.fmt.numChannels} channel(s) at ` +
                `${wav.fmt.sampleRate} Hz`);
  process.exit(2);
}
wav.toBitDepth('32f');
const samples = Float32Array.from(wav.getSamples(false, Float32Array));

// Whole signal: transformers.js' DacModel runs onnx/encoder_model.onnx and onnx/decoder_model.onnx.
env.allowRemoteModels = false;
env.localModelPath = path.dirname(path.resolve(folder));
const model = await DacModel.from_pretrained(path.basename(path.resolve(folder)), { dtype: 'fp32' });
const input_values = new Tensor('float32', samples, [1, 1, samples.length]);
const { audio_codes } = await model.encode({ input_values });
const { audio_values } = await model.decode({ audio_codes });

// Streamed: the step graphs, fed the signal in blocks of 1000 samples and the codes 3 frames at a time.
const session = (name) => ort.InferenceSession.create(path.join(folder, 'onnx', `${name}_step.onnx`));
const encoder = new StepStream(ort, await session('encoder'), config.streaming.encoder, 1);
const streamed = Array.from({ length: config.n_codebooks }, () => []);
const collect = (into, rows) => rows.forEach((r, c) => { into[c] = into[c].concat(r); });
for (let start = 0; start < samples.length; start += 1000) {
  collect(streamed, await encoder.feed([Array.from(samples.subarray(start, start + 1000))]));
}
collect(streamed, await encoder.finish());
const decoder = new StepStream(ort, await session('decoder'), config.streaming.decoder, config.n_codebooks);
const audio = [[]];
for (let start = 0; start < streamed[0].length; start += 3) {
  collect(audio, await decoder.feed(streamed.map((rows) => rows.slice(start, start + 3))));
}
collect(audio, await decoder.finish());

const write = (file, data) => {
  const out = new wavefile.WaveFile();
  out.fromScratch(1, config.sampling_rate, '32f', Float32Array.from(data));
  writeFileSync(file, out.toBuffer());
};
write(`${prefix}.wav`, audio_values.data);
write(`${prefix}.stream.wav`, audio[0]);
writeFileSync(`${prefix}.json`, JSON.stringify({
  dims: audio_codes.dims,
  codes: Array.from(audio_codes.data, Number),
  stream_codes: streamed.map((rows) => rows.map(Number)),
}));
console.error(`${input}: ${audio_codes.dims[2]} frames of ${audio_codes.dims[1]} codebooks, ` +
              `${audio_values.dims[2]} samples decoded`);
