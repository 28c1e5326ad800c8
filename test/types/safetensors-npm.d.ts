/** Types for the npm `safetensors` package (0.0.1), used only as an independent cross-check in tests. */
declare module 'safetensors' {
  export class SafeTensor {
    constructor(bytes: Uint8Array);
    readonly buffer: Uint8Array;
    readonly metadata: Map<string, { dtype: string; shape: number[]; data_offsets: [number, number] }>;
    getTensor(name: string): Uint8Array;
  }
}
