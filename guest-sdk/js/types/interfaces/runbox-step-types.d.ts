/** @module Interface runbox:step/types@1.0.0 **/
/**
 * Why the host refused a call (ABI v1's negative codes; "not found" is
 * `none` instead).
 * # Variants
 * 
 * ## `"denied"`
 * 
 * Refused by policy: the key is outside the granted patterns, or
 * the tool is not granted or has another mode. Recorded as a
 * violation: the attempt escalates whatever the step returns.
 * ## `"too-large"`
 * 
 * A key or value over its limit (`kv_key_bytes`, `kv_value_bytes`).
 * ## `"invalid"`
 * 
 * A string that is not valid here: tool args that are not a JSON
 * object of the tool's declared arguments.
 * ## `"budget"`
 * 
 * `kv_ops`, `kv_write_bytes` or `tool_calls` used up. Calling the
 * same capability again stops the step.
 * ## `"tool-failure"`
 * 
 * The tool could not be started.
 */
export type ErrorCode = 'denied' | 'too-large' | 'invalid' | 'budget' | 'tool-failure';
/**
 * What a tool answered.
 */
export interface Answer {
  /**
   * Exit code; -1 when killed or timed out.
   */
  rc: number,
  /**
   * Standard output, capped at `limits.tool_output_bytes`.
   */
  stdout: string,
  /**
   * Standard error, capped the same way.
   */
  stderr: string,
  /**
   * Whether stdout or stderr was cut at the cap.
   */
  truncated: boolean,
  /**
   * Whether the tool was killed at its timeout.
   */
  timedOut: boolean,
}
/**
 * How a step ends when it does not end `ok`.
 */
export type OutcomeError = OutcomeErrorRetry | OutcomeErrorEscalate | OutcomeErrorFail;
/**
 * Try again (the runbook's `max_retries` and backoff apply).
 */
export interface OutcomeErrorRetry {
  tag: 'retry',
  val: string,
}
/**
 * Stop and hand the incident to a human, with the reason.
 */
export interface OutcomeErrorEscalate {
  tag: 'escalate',
  val: string,
}
/**
 * The step failed; the runbook's `fail` transition applies.
 */
export interface OutcomeErrorFail {
  tag: 'fail',
  val: string,
}
