(() => {
  const problems = [];
  const nameOf = (e) => {
    const label = e.getAttribute('aria-label');
    if (label && label.trim()) return label.trim();
    const by = e.getAttribute('aria-labelledby');
    if (by) return by.split(/\s+/).map((id) => document.getElementById(id)?.textContent || '').join(' ').trim();
    if (e.id) { const l = document.querySelector(`label[for="${e.id}"]`); if (l && l.textContent.trim()) return l.textContent.trim(); }
    const wrap = e.closest('label'); if (wrap && wrap.textContent.trim()) return wrap.textContent.trim();
    if (['INPUT', 'SELECT', 'TEXTAREA'].includes(e.tagName)) return (e.getAttribute('title') || '').trim();
    return (e.textContent || '').trim();
  };
  const visible = (e) => { const r = e.getBoundingClientRect(); return r.width > 0 && r.height > 0 && getComputedStyle(e).visibility !== 'hidden'; };
  for (const e of document.querySelectorAll('a[href], button, input, select, textarea, summary')) {
    if (!visible(e)) continue;
    const what = `${e.tagName.toLowerCase()}${e.id ? '#' + e.id : ''} "${(e.textContent || e.value || '').trim().slice(0, 30)}"`;
    if (!nameOf(e)) problems.push(`no accessible name: ${what}`);
    // The target: a checkbox's is its label; a link in running text is exempt.
    const target = e.type === 'checkbox' && e.closest('label') ? e.closest('label') : e;
    const r = target.getBoundingClientRect();
    const inText = e.tagName === 'A' && getComputedStyle(e).display === 'inline';
    if (!inText && (r.height < 47.5 || r.width < 47.5)) problems.push(`target ${Math.round(r.width)}x${Math.round(r.height)}: ${what}`);
  }
  for (const img of document.querySelectorAll('img')) if (!img.hasAttribute('alt')) problems.push(`img without alt: ${img.src}`);
  return problems;
})()
