fn main() {
    for crd in portcullis::api::crds() {
        print!("---\n{}", portcullis::api::crd_yaml(&crd).unwrap());
    }
}
