"""lass model core: backbone, language masks, mixed-language masked execution, bundles."""
