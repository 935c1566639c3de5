/** @module Interface runbox:step/input@1.0.0 **/
/**
 * The input document, as JSON text.
 */
export function get(): string;
