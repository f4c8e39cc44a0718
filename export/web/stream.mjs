// The step graphs' driver (encoder_step.onnx, decoder_step.onnx), the loop of dac_codec.export.onnx.StepStream:
// buffer the input into blocks of spec.block rows, run one call per block with the state it returned last, drop
// the first spec.delay output rows (they lie before the signal), and once the signal has ended, flush with empty
// calls and keep the whole-signal output's length. `spec` is config.json's streaming.encoder or streaming.decoder.
// Works with onnxruntime-node and onnxruntime-web alike (`ort` is either); one signal (batch 1) at a time.

export class StepStream {
  /**
   * @param {object} ort onnxruntime-node or onnxruntime-web
   * @param {object} session an InferenceSession of encoder_step.onnx or decoder_step.onnx
   * @param {object} spec config.json's streaming.encoder or streaming.decoder
   * @param {number} channels input channels: 1 for audio, n_codebooks for codes
   */
  constructor(ort, session, spec, channels) {
    Object.assign(this, { ort, session, spec, channels });
    this.Array = spec.input_type === 'int64' ? BigInt64Array : Float32Array;
    this.state = new ort.Tensor('float32', new Float32Array(spec.state_size), [1, spec.state_size]);
    this.position = new ort.Tensor('int64', BigInt64Array.from([0n, -1n]), [2]);
    this.pending = Array.from({ length: channels }, () => []); // per channel, input rows not yet run
    this.received = 0; // input rows taken
    this.emitted = 0; // output rows the graph has given
  }

  /** Takes the next rows of the input (one array of t rows per channel); returns the output rows they determine,
   * as one array per output channel. */
  async feed(piece) {
    piece.forEach((rows, c) => { this.pending[c] = this.pending[c].concat(Array.from(rows)); });
    this.received += piece[0].length;
    const outputs = [];
    while (this.pending[0].length >= this.spec.block) {
      outputs.push(await this.call(this.pending.map((rows) => rows.splice(0, this.spec.block)), this.spec.block));
    }
    return this.keep(outputs, null);
  }

  /** The rest of the output, once the signal has ended. */
  async finish() {
    const { block, output_block, delay, trim } = this.spec;
    const given = this.pending[0].length;
    const zero = this.Array === BigInt64Array ? 0n : 0;
    const pad = (rows) => rows.concat(Array(block - rows.length).fill(zero));
    const total = Math.ceil((this.received * output_block) / block) - trim; // the whole-signal output's length
    const outputs = [await this.call(this.pending.map(pad), given)];
    while (this.emitted < delay + total) outputs.push(await this.call(this.pending.map(() => pad([])), 0));
    return this.keep(outputs, total);
  }

  async call(rows, length) {
    const { ort, session, spec } = this;
    const block = new ort.Tensor(spec.input_type, this.Array.from(rows.flat()), [1, this.channels, spec.block]);
    const feeds = { input_length: new ort.Tensor('int64', BigInt64Array.from([BigInt(length)]), [1]),
                    state: this.state, position: this.position };
    feeds[session.inputNames[0]] = block;
    const result = await session.run(feeds);
    const output = result[session.outputNames[0]];
    this.state = result.next_state;
    this.position = result.next_position;
    this.emitted += spec.output_block;
    return output;
  }

  /** The output rows at positions [0, total) (from 0 on while the end is unknown), per output channel. */
  keep(outputs, total) {
    const { output_block, output_channels, delay } = this.spec;
    const kept = Array.from({ length: output_channels }, () => []);
    let first = this.emitted - outputs.length * output_block - delay; // position of the first output row
    for (const output of outputs) {
      for (let c = 0; c < output_channels; c++) {
        for (let i = 0; i < output_block; i++) {
          const at = first + i;
          if (at >= 0 && (total === null || at < total)) kept[c].push(output.data[c * output_block + i]);
        }
      }
      first += output_block;
    }
    return kept;
  }
}
