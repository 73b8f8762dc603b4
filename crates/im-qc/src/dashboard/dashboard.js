// The live quality-control dashboard script (placeholder).
