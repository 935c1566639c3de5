/** @module Interface runbox:step/tool-read@1.0.0 **/
/**
 * Runs the named tool with `args`, a JSON object of its declared
 * arguments. Each call runs the tool.
 */
export function call(name: string, args: string): Answer;
export type ErrorCode = import('./runbox-step-types.js').ErrorCode;
export type Answer = import('./runbox-step-types.js').Answer;
