/** @module Interface runbox:step/kv-read@1.0.0 **/
/**
 * The value of `key`, or `none` when absent. Reads see the step's own
 * staged writes.
 */
export function get(key: string): Uint8Array | undefined;
export type ErrorCode = import('./runbox-step-types.js').ErrorCode;
