// The signing keys the analyst pinned: public keys, so they may live in the browser's storage
// (the credential never does). Prove checks signatures against these, not against what the
// server says its keys are.
const KEY = 'vigil.pinned-keys';

export function loadPinned(): string {
  try {
    return localStorage.getItem(KEY) ?? '';
  } catch {
    return '';
  }
}

export function savePinned(text: string) {
  try {
    localStorage.setItem(KEY, text);
  } catch {
    /* storage refused: kept for this page only */
  }
}
