// The probe step in AssemblyScript: GET /health through the read tool
// `http_probe`, classify the answer. Same behaviour as steps/probe (Rust).
import { ok, escalate, log, tool, json, inputText } from "./runbox";

const service = json.str(inputText(), "service");
const answer = tool.read("http_probe", "{\"service\":" + json.quote(service) + "}");
if (answer.code != 0) {
  escalate("http_probe could not run: code " + answer.code.toString());
} else {
  const status = I32.parseInt(answer.stdout.trim());
  const cls = status >= 200 && status <= 299 ? "healthy" : status == 0 ? "down" : "degraded";
  log.info(service + " answered " + status.toString() + ": " + cls);
  ok("{\"class\":\"" + cls + "\",\"status\":" + status.toString() + "}");
}
