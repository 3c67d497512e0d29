/** `tensorbroker validate FILE`: the checks the broker runs on models.yaml, without starting anything. */
import { loadModelsFile } from '../../model-manager/models-file';

export interface ValidateReport { ok: boolean; text: string }

export async function validateModelsFile(file: string): Promise<ValidateReport> {
  const parsed = await loadModelsFile(file);
  const lines = [...parsed.errors];
  for (const s of parsed.specs) {
    const how = [s.image ? `image ${s.image}` : '', s.command ? `command ${s.command.join(' ')}` : ''].filter(Boolean).join(', ');
    lines.push(`ok  ${s.name}${how ? ` (${how})` : ''}`);
  }
  const ok = parsed.ok && parsed.errors.length === 0;
  lines.push(ok
    ? `${parsed.path}: ${parsed.specs.length} model(s), no problems`
    : `${parsed.path}: ${parsed.errors.length} problem(s)${parsed.ok ? `, ${parsed.specs.length} valid model(s)` : ''}`);
  return { ok, text: lines.join('\n') + '\n' };
}
