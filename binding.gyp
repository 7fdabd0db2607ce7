{
  "targets": [
    {
      "target_name": "sys_addon",
      "sources": ["native/sys_addon.c"],
      "cflags": ["-O2", "-Wall"]
    }
  ]
}
