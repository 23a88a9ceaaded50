use lb_e2e::{client, vip_addr, Lab, HTTP_PORT};
#[test]
fn smoke() {
    let mut lab = Lab::build(3, 1).unwrap();
    lab.start_balancers().unwrap();
    let r = lab.in_client(|| (0..1).map(|_| client::http_get(vip_addr(false, HTTP_PORT))).collect::<anyhow::Result<Vec<_>>>());
    println!("{r:?} {:?}", lab.servers.http_counts());
    let lim = lb_control::dataplane::Limits { max_vips: 32, max_reals: 65, conn_table_size: 65536, ring_size: 65537 };
    let bal = lb_control::dataplane::Balancer::open(lim, Some(&lab.balancers[0].pin_dir)).unwrap();
    println!("{:x?}", bal.config().unwrap());
    println!("{}", lab.router.ip(&["link"]).unwrap());
    println!("{}", lab.balancers[0].ns.ip(&["link"]).unwrap());
    println!("{}", lab.balancers[0].log());
    if std::env::var("LAB_HOLD").is_ok() { std::thread::sleep(std::time::Duration::from_secs(40)); }
}
