/**
 * GPU inventory and exclusive placement: one copy per GPU (never two copies on
 * one GPU, never "all GPUs"). The inventory comes from `nvidia-smi` when it is
 * installed, else from configuration (TB_GPUS=0,1,2,3), so the logic runs and is
 * tested on hosts without GPUs.
 */
import { execFile } from 'node:child_process';

export interface GpuUse {
  gpu: string;
  /** Copy holding the GPU, if any. */
  copyId?: string;
  model?: string;
}

/** Parses TB_GPUS ("0,1,2,3", "GPU-uuid,…"; empty = none). */
export function parseGpuList(text: string | undefined): string[] {
  if (!text) return [];
  return [...new Set(text.split(',').map((s) => s.trim()).filter(Boolean))];
}

/** GPU indexes from `nvidia-smi --query-gpu=index --format=csv,noheader`; undefined when nvidia-smi is absent or fails. */
export function queryNvidiaSmi(bin = 'nvidia-smi', timeoutMs = 5000): Promise<string[] | undefined> {
  return new Promise((resolve) => {
    execFile(bin, ['--query-gpu=index', '--format=csv,noheader'], { timeout: timeoutMs }, (err, stdout) => {
      if (err) return resolve(undefined);
      resolve(parseGpuList(String(stdout).split(/\r?\n/).join(',')));
    });
  });
}

/** The inventory: nvidia-smi's list when present, else the configured one. */
export async function detectGpus(configured: string[], smi: () => Promise<string[] | undefined> = queryNvidiaSmi): Promise<{ gpus: string[]; source: 'nvidia-smi' | 'config' | 'none' }> {
  const found = await smi();
  if (found && found.length > 0) return { gpus: found, source: 'nvidia-smi' };
  if (configured.length > 0) return { gpus: configured, source: 'config' };
  return { gpus: [], source: 'none' };
}

export class GpuAllocator {
  private readonly holder = new Map<string, { copyId: string; model: string }>();

  constructor(readonly inventory: string[]) {}

  get size(): number {
    return this.inventory.length;
  }

  free(allowed?: readonly string[]): string[] {
    return this.inventory.filter((g) => !this.holder.has(g) && (!allowed || allowed.includes(g)));
  }

  /** Takes `count` free GPUs (lowest first) among `allowed`, or none at all. */
  allocate(copyId: string, model: string, count: number, allowed?: readonly string[]): string[] | undefined {
    const free = this.free(allowed);
    if (free.length < count) return undefined;
    const got = free.slice(0, count);
    for (const g of got) this.holder.set(g, { copyId, model });
    return got;
  }

  /** Records GPUs an adopted copy already holds. GPUs outside the inventory or already held are skipped. */
  claim(copyId: string, model: string, gpus: readonly string[]): string[] {
    const ok = gpus.filter((g) => this.inventory.includes(g) && !this.holder.has(g));
    for (const g of ok) this.holder.set(g, { copyId, model });
    return ok;
  }

  release(copyId: string): string[] {
    const freed: string[] = [];
    for (const [g, h] of this.holder) {
      if (h.copyId === copyId) {
        this.holder.delete(g);
        freed.push(g);
      }
    }
    return freed;
  }

  /** Could `count` GPUs among `allowed` ever be given (the inventory is big enough)? */
  feasible(count: number, allowed?: readonly string[]): boolean {
    return this.inventory.filter((g) => !allowed || allowed.includes(g)).length >= count;
  }

  usage(): GpuUse[] {
    return this.inventory.map((gpu) => ({ gpu, ...this.holder.get(gpu) }));
  }

  heldBy(copyId: string): string[] {
    return [...this.holder].filter(([, h]) => h.copyId === copyId).map(([g]) => g);
  }
}
