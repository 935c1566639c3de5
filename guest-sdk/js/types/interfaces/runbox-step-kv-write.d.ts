/** @module Interface runbox:step/kv-write@1.0.0 **/
/**
 * Stages a write.
 */
export function put(key: string, value: Uint8Array): void;
/**
 * Stages a delete.
 */
export { _delete as delete };
function _delete(key: string): void;
export type ErrorCode = import('./runbox-step-types.js').ErrorCode;
