// Vigil's analyst console. `npm run build` writes dist/, which the vigil binary embeds
// (query/src/api/console.rs). Everything is bundled: the page loads nothing from elsewhere.
import { defineConfig } from 'vite';

export default defineConfig({
  base: '/',
  oxc: { jsx: { runtime: 'automatic', importSource: 'preact' } },
  build: {
    outDir: 'dist',
    emptyOutDir: true,
    // No inlined data: URLs for scripts, no module preload polyfill (an inline script).
    assetsInlineLimit: 0,
    modulePreload: { polyfill: false },
    sourcemap: false,
    chunkSizeWarningLimit: 1024,
  },
});
